"""``python train.py``: validate, run the method's pipeline (in every rank of a multi-process job), print the table."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from tms.cli.common import setup
from tms.config.validate import validate
from tms.core import distributed
from tms.evaluation.objective import objective_value
from tms.evaluation.table import summary_table
from tms.evaluation.wandb_log import log_results
from tms.pipeline import run


def run_training(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)  # before anything is written
    with distributed.session(cfg.trainer):  # several processes (trainer=ddp/fsdp/...): start or join the ranks
        out = setup(cfg)
        results = run(cfg, out, validated=True)
        if not distributed.is_zero():
            return results
        log_results(cfg, results, out)
    table = summary_table(results["rows"], list(cfg.eval.get("retention") or []), str(cfg.eval.target))
    print(f"\n{table}\n")
    print(f"results:     {out / 'results.json'}")
    print(f"final model: {results['model']}")
    if (out / "checkpoints").exists():
        print(f"SFT checkpoints (T={cfg.sft.num_checkpoints}): {out / 'checkpoints'}")
    value = objective(cfg, results)
    if value is not None:
        print(f"objective:   {cfg.objective.metric} = {value}")
    print(f"run dir:     {out}")
    return results


def objective(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """What ``train.py``'s main returns to a sweeper: ``objective.metric`` of the run (:mod:`tms.evaluation.objective`)."""
    o = cfg.get("objective") or {}
    return objective_value(results, o.get("metric"), o.get("floor"), str(o.get("floor_metric") or "target"))
