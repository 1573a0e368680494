"""Evaluation results to Weights & Biases, under the same metric names as ``results.json``.

With ``logger=wandb`` (``conf/logger/wandb.yaml``; ``WANDB_MODE=offline`` logs without a network) the
configured Lightning ``WandbLogger`` opens one run per evaluation (``job_type="eval"``) and gets

* in its **summary** every number of ``results.json``, keyed by its JSON path joined with ``/``
  (``target``, ``xfer``, ``forgetting``, ``scores/<benchmark>``, ``kl_to_base/retention/kl_seq``,
  ``kl_from_base/retention/kl_seq``,
  ``pass_at_k/8``, ``pld/pld``, ``rows/base/target``, ...); sampled completions are not numbers and
  go to the table below instead;
* a ``samples`` table (model, benchmark, prompt, completion, score) of the completions in
  ``results.json``'s ``samples`` of every row (``log_samples.eval`` per benchmark);
* a ``harvest_samples`` table (t, step, prompt, completion, score, tokens) of the first ``log_samples.harvest``
  buffer rows of every harvested checkpoint t of the run (``pipeline.json``'s harvest stages), the first thing to
  read when a student misbehaves (RL rollouts are logged during training: :class:`tms.methods.rl.RLModule`);
* with a checkpoint curve, one history step per SFT checkpoint t (``curve/target``,
  ``curve/retention_mean``, ``curve/forgetting``, ``curve/kl_target``, ``curve/kl_retention`` (KL(π_t ‖ π_0),
  ``kl_to_base``), ``curve/kl_from_target``, ``curve/kl_from_retention`` (the forward KL(π_0 ‖ π_t),
  ``kl_from_base``), ``curve/pld``).

Only these numbers and texts are sent: W&B's system metadata, git and code capture are switched off,
and neither the environment nor any credential is logged.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tms.core.io import read_json
from tms.core.tracking import log_samples
from tms.data.buffer import read_buffer

log = logging.getLogger(__name__)

SKIP = frozenset({"samples"})


def is_wandb(logger_cfg: Any) -> bool:
    """Whether the logger config is the W&B logger."""
    return bool(logger_cfg) and "wandb" in str(logger_cfg.get("_target_", "")).lower()


def flatten_numbers(obj: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(path, value)`` for every finite int/float leaf (not bool) of a JSON-like object; ``samples`` skipped."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if key not in SKIP:
                yield from flatten_numbers(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        yield prefix, obj


def sample_rows(results: Mapping[str, Any]) -> list[list[Any]]:
    """``[model, benchmark, prompt, completion, score]`` for the samples of every row of the results."""
    rows = []
    for label, row in (results.get("rows") or {"model": results}).items():
        for bench, samples in (row.get("samples") or {}).items():
            rows += [[label, bench, s.get("prompt"), s.get("completion"), s.get("score")] for s in samples]
    return rows


HARVEST_COLUMNS = ["t", "step", "prompt", "completion", "score", "tokens"]


def harvest_rows(run_dir: str | Path, per_t: int) -> list[list[Any]]:
    """``[t, step, prompt, completion, score, tokens]`` for the first ``per_t`` buffer rows (by example id) of every
    harvest stage of the run (``<run_dir>/pipeline.json``); [] when the run harvested nothing."""
    pipe = Path(run_dir) / "pipeline.json"
    if per_t <= 0 or not pipe.is_file():
        return []
    stages = {int(label.split("=")[-1]): stage_dir  # "t=3" -> 3
              for label, stage_dir in ((read_json(pipe).get("stages") or {}).get("harvest") or {}).items()}
    rows = []
    for t, stage_dir in sorted(stages.items()):
        table = read_buffer(Path(run_dir) / stage_dir).slice(0, per_t).to_pylist()
        rows += [[t, r["step"], r["prompt"], r["completion"], r["score"], r["num_tokens"]] for r in table]
    return rows


def curve_steps(curve: Mapping[str, Any]) -> Iterator[dict[str, float]]:
    """One dict of ``curve/*`` numbers per checkpoint of a :func:`~tms.stages.evaluation.checkpoint_curve`."""
    for p in curve["checkpoints"]:
        kl, fwd = p.get("kl_to_base") or {}, p.get("kl_from_base") or {}
        values = {"t": p["t"], "step": p["step"], "target": p["target"], "retention_mean": p.get("retention_mean"),
                  "forgetting": p.get("forgetting"), "kl_target": (kl.get("target") or {}).get("kl_seq"),
                  "kl_retention": (kl.get("retention") or {}).get("kl_seq"),
                  "kl_from_target": (fwd.get("target") or {}).get("kl_seq"),
                  "kl_from_retention": (fwd.get("retention") or {}).get("kl_seq"),
                  "pld": (p.get("pld") or {}).get("pld")}
        yield {f"curve/{k}": v for k, v in values.items() if v is not None}


def log_results(cfg: DictConfig, results: Mapping[str, Any], run_dir: str | Path,
                curve: Mapping[str, Any] | None = None) -> dict[str, float] | None:
    """Send ``results`` (and the checkpoint ``curve``) to W&B when ``cfg.logger`` is W&B; else do nothing.

    Returns the summary that was written (``{metric name: value}``), or None without W&B.
    """
    logger_cfg = cfg.get("logger")
    if not is_wandb(logger_cfg):
        return None
    import wandb
    from hydra.utils import instantiate

    run_dir = Path(run_dir)
    settings = wandb.Settings(x_disable_meta=True, x_disable_stats=True, disable_git=True, save_code=False,
                              console="off")
    extra = {} if logger_cfg.get("name") else {"name": f"eval-{run_dir.name}"}
    logger = instantiate(logger_cfg, save_dir=str(run_dir), job_type="eval", settings=settings, **extra)
    run = logger.experiment
    summary = dict(flatten_numbers(results))
    if curve is not None:
        for values in curve_steps(curve):
            run.log(values)
    rows = sample_rows(results)
    if rows:
        run.log({"samples": wandb.Table(columns=["model", "benchmark", "prompt", "completion", "score"], data=rows)})
    harvested = harvest_rows(run_dir, log_samples(cfg, "harvest"))
    if harvested:
        run.log({"harvest_samples": wandb.Table(columns=HARVEST_COLUMNS, data=harvested)})
    run.summary.update(summary)
    written = {k: run.summary[k] for k in summary}
    log.info("W&B run %s: %d summary metrics, %d sampled completions", run.id, len(summary), len(rows))
    run.finish()
    return written
