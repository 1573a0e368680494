r"""Reading the toy reproduction's CSVs into :class:`Results` and :class:`Buffer` (parsing and filling, no analysis).

``results.csv``: one row per (method, seed, setting). Columns ``method, seed, setting, t`` identify the
row; every other column is a metric. The retention skills are the columns between ``target`` and
``retention_mean`` (the toy world: add, reverse, max, sort). Empty cells, ``nan`` and non-finite numbers
are missing. Methods: ``base`` (θ0), ``sft_t=<t>`` (SFT checkpoint t), ``sft``, ``self_sft``, ``final_sft``,
``tms``, ``grpo``, ``reinforce``; ``setting`` = ``main`` or an ablation of TMS (``p_t=early``, ``T=4``,
``alpha=0.5``, ``correct_only``, ...). What is filled in when a cell is missing is listed under "Data
notes" in the report (:func:`read_results`): θ0's KL cells are 0 by definition and its F is 0; a missing
F is recomputed with eq. 3.2 from the skill columns and the same seed's θ0 row; a missing
``retention_mean`` is the mean of the skills when all are present.

``buffer.csv`` (optional): ``seed, setting, t`` + numeric columns (``n, accuracy, mean_tokens, finished,
share_<format>..., student_pld``), one row per harvested checkpoint t of a TMS run (t = 0 is θ0).
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tms.evaluation.metrics import forgetting_score
from tms.evaluation.report import METHOD_ORDER

ID_COLUMNS = ("method", "seed", "setting", "t")
KL_COLUMNS = ("kl_fwd_target", "kl_rev_target", "kl_fwd_retention", "kl_rev_retention")
#: columns the analysis needs: added (all empty, with a data note) when the CSV lacks them
NEEDED = ("retention_mean", "F", "xfer") + KL_COLUMNS + ("pld",)


def _float(cell: str | None) -> float | None:
    if cell is None or not str(cell).strip():
        return None
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _int(cell: str | None) -> int | None:
    v = _float(cell)
    return None if v is None else int(round(v))


_SFT_T = re.compile(r"^sft_t=(\d+)$")


def sft_t(method: str) -> int | None:
    """t of an SFT checkpoint row ``sft_t=<t>``, else None."""
    m = _SFT_T.match(method)
    return int(m.group(1)) if m else None


@dataclass
class Results:
    """The rows of results.csv (``method, seed, setting, t`` + float-or-None metrics) and what was discovered."""

    rows: list[dict[str, Any]]
    skills: list[str]
    metrics: list[str]
    notes: list[str] = field(default_factory=list)

    def select(self, method: str | None = None, setting: str | None = None, seeds: Iterable[int] | None = None):
        seeds = None if seeds is None else set(seeds)
        return [r for r in self.rows if (method is None or r["method"] == method)
                and (setting is None or r["setting"] == setting) and (seeds is None or r["seed"] in seeds)]

    def seeds(self, setting: str = "main") -> list[int]:
        return sorted({r["seed"] for r in self.rows if r["setting"] == setting and r["seed"] is not None})

    def methods(self, setting: str = "main") -> list[str]:
        """The methods of ``setting`` except SFT checkpoints: METHOD_ORDER first, then in order of appearance."""
        found = list(dict.fromkeys(r["method"] for r in self.rows if r["setting"] == setting
                                   and sft_t(r["method"]) is None))
        return [m for m in METHOD_ORDER if m in found] + [m for m in found if m not in METHOD_ORDER]


def read_results(path: str | Path) -> Results:
    """Parse results.csv (see the module docstring); fills and oddities are recorded in ``notes``."""
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        raw = [{k.strip(): v for k, v in r.items() if k is not None} for r in reader]
    missing = [c for c in ("method", "target") if c not in header]
    if missing:
        raise ValueError(f"{path}: results.csv has no column {missing} (columns: {header})")
    notes: list[str] = []
    if "retention_mean" in header and header.index("retention_mean") > header.index("target"):
        skills = header[header.index("target") + 1:header.index("retention_mean")]
    else:
        known = set(ID_COLUMNS) | set(NEEDED) | {"target", "sc_acc", "answer_entropy"}
        skills = [c for c in header[header.index("target") + 1:] if c not in known and not c.startswith("pass@")]
        notes.append(f"no `retention_mean` column after `target`: skills taken to be {skills}")
    metrics = [c for c in header if c not in ID_COLUMNS]
    for c in NEEDED:
        if c not in metrics:
            metrics.append(c)
            notes.append(f"column `{c}` missing from results.csv: treated as empty")
    for c in ("setting", "seed", "t"):
        if c not in header:
            notes.append(f"column `{c}` missing from results.csv"
                         + {"setting": ": every row is `main`", "seed": ": every row is seed 0",
                            "t": ": t read from `sft_t=<t>`"}[c])
    by_key: dict[tuple, dict] = {}
    for r in raw:
        method = (r.get("method") or "").strip()
        if not method:
            continue
        row: dict[str, Any] = {"method": method, "seed": _int(r.get("seed")) if "seed" in header else 0,
                               "setting": (r.get("setting") or "").strip() or "main", "t": _int(r.get("t"))}
        if row["t"] is None:
            row["t"] = sft_t(method)
        for c in metrics:
            row[c] = _float(r.get(c))
        key = (method, row["seed"], row["setting"])
        if key in by_key:
            notes.append(f"duplicate row {key}: the last one is used")
        by_key[key] = row
    rows = list(by_key.values())
    res = Results(rows, skills, metrics, notes)
    _fill(res)
    return res


def _fill(res: Results) -> None:
    """The fills listed in the module docstring, each counted in ``res.notes``."""
    counts = {"retention_mean": 0, "base_kl": 0, "base_F": 0, "F": 0}
    for r in res.rows:
        if r["retention_mean"] is None and res.skills and all(r.get(s) is not None for s in res.skills):
            r["retention_mean"] = math.fsum(r[s] for s in res.skills) / len(res.skills)
            counts["retention_mean"] += 1
    base = {r["seed"]: r for r in res.rows if r["method"] == "base" and r["setting"] == "main"}
    for r in res.rows:
        if r["method"] == "base":
            for c in KL_COLUMNS:
                if r[c] is None:
                    r[c] = 0.0
                    counts["base_kl"] += 1
            if r["F"] is None:
                r["F"] = 0.0
                counts["base_F"] += 1
        elif r["F"] is None and res.skills and r["seed"] in base:
            b = base[r["seed"]]
            if all(r.get(s) is not None and b.get(s) is not None for s in res.skills):
                r["F"] = forgetting_score({s: r[s] for s in res.skills}, {s: b[s] for s in res.skills}, res.skills)
                counts["F"] += 1
    text = {"retention_mean": "empty `retention_mean` set to the mean of the skills",
            "base_kl": "empty KL cells of θ0 set to 0 (KL of θ0 to itself)", "base_F": "empty F of θ0 set to 0",
            "F": "empty F recomputed with eq. 3.2 from the skills and the same seed's θ0 row"}
    res.notes += [f"{text[k]}: {n} cell(s)" for k, n in counts.items() if n]


@dataclass
class Buffer:
    rows: list[dict[str, Any]]
    columns: list[str]
    notes: list[str] = field(default_factory=list)


def read_buffer(path: str | Path) -> Buffer:
    """Parse buffer.csv: ``seed, setting, t`` + every other column as a float-or-None metric."""
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        raw = [{k.strip(): v for k, v in r.items() if k is not None} for r in reader]
    if "t" not in header:
        raise ValueError(f"{path}: buffer.csv has no column `t` (columns: {header})")
    notes = [f"buffer.csv: column `{c}` missing" for c in ("seed", "setting", "accuracy") if c not in header]
    columns = [c for c in header if c not in ("seed", "setting", "t")]
    rows = []
    for r in raw:
        t = _int(r.get("t"))
        if t is None:
            continue
        row = {"seed": _int(r.get("seed")) if "seed" in header else 0,
               "setting": (r.get("setting") or "").strip() or "main", "t": t}
        row.update({c: _float(r.get(c)) for c in columns})
        rows.append(row)
    return Buffer(rows, columns, notes)
