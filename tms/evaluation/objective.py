"""The number ``python train.py`` returns to a Hydra sweeper (``objective`` in conf/train.yaml).

``objective.metric`` names a value of the method's row of ``results.json``: a top-level key (``target``,
``forgetting``, ``xfer``), ``retention_mean`` (the mean of the retention scores) or a dotted path
(``scores.add``, ``kl_to_base.target.kl_seq``). With ``objective.floor``, a run whose ``floor_metric`` is below
the floor returns nan, which Optuna records as a failed trial: "the best retention among runs that reach a target
accuracy of at least the floor" is ``metric=retention_mean floor=0.8 floor_metric=target``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping


def metric_value(row: Mapping[str, Any], name: str) -> float:
    """``row[name]`` as a float; ``retention_mean`` = the mean of ``row["retention"]``; dotted names walk dicts."""
    if name == "retention_mean":
        ret = row.get("retention") or {}
        if not ret:
            raise KeyError("objective: retention_mean needs retention benchmarks (eval.retention is empty)")
        return sum(float(v) for v in ret.values()) / len(ret)
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(f"objective: {name!r} is not in the results (top-level keys: {sorted(row)})")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"objective: {name!r} is {value!r}, not a number")
    return float(value)


def objective_value(row: Mapping[str, Any], metric: str | None, floor: float | None = None,
                    floor_metric: str = "target") -> float | None:
    """The sweeper's objective of one run (see the module docstring); None when no metric is configured."""
    if metric is None:
        return None
    if floor is not None and metric_value(row, floor_metric) < float(floor):
        return math.nan
    return metric_value(row, metric)
