"""``python evaluate.py``: evaluate one model (and optionally SFT's checkpoint curve) against θ0.

What it does, given the composed ``conf/eval.yaml`` (the same tree as ``train.yaml``):

1. θ0 = :func:`tms.stages.base_model.resolve_base` (the configured model: a hub id, a local directory or the
   toy world's cached base stage).
2. The model to evaluate = ``model_path`` — a model directory, a pipeline run directory (its
   ``model`` link is used) or a hub id — or, when null, the last checkpoint of ``checkpoints_of``, or
   else θ0 itself. A path inside the stage cache gets the same identity the pipeline gives it, so
   its ``eval`` stage is shared with ``python train.py`` (see :func:`model_ref`).
3. Both are evaluated through :func:`tms.stages.evaluation.run_eval` (cached per model and suite: θ0's
   numbers are computed once) and the model's row gets the Δ metrics of
   :func:`tms.evaluation.suite.relative_metrics`.
4. ``<run_dir>/results.json`` = the model's row (every metric) + ``model``, ``base_model``, ``seed``,
   ``suite`` (target / other targets / retention names) and ``rows`` = {base, <label>}.
5. ``checkpoints_of=<SFT run dir | SFT stage dir | checkpoints dir>`` also evaluates θ0 and every one
   of the T checkpoints (:func:`checkpoint_curve`) into ``<run_dir>/checkpoints.json``, the curve the
   report draws (target vs retention, PLD and KL-to-base across t).
6. ``buffer_of=<TMS run dir | harvest stage dir | [harvest stage dirs]>`` also writes
   ``<run_dir>/buffer.json`` (:func:`tms.evaluation.buffer_stats.buffer_report`): per checkpoint t of the
   trajectory buffer, the harvest's accuracy, mean length, finished share and solution-format shares and,
   when ``model_path`` is given, that model's (the student's) NLL of each t's samples (``buffer_limit``
   rows per t; null: all).
7. With ``logger=wandb`` the numbers go to a W&B run summary (:mod:`tms.evaluation.wandb_log`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.cli.common import setup
from tms.config.eval import check_suite, suite_names
from tms.core.checks import integer
from tms.core.errors import ConfigError
from tms.core.io import write_json
from tms.evaluation.buffer_stats import buffer_dirs_of, buffer_report
from tms.evaluation.table import summary_table
from tms.evaluation.wandb_log import log_results
from tms.stages.base_model import resolve_base
from tms.stages.common import model_kwargs
from tms.stages.evaluation import (
    check_same_base,
    checkpoint_curve,
    default_label,
    model_ref,
    run_eval,
    summarize,
)


def evaluate(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Evaluate the model of ``cfg`` (see the module docstring); writes and returns ``results.json``."""
    run_dir = Path(run_dir)
    check_suite(cfg)
    buffer_dirs = None
    if cfg.get("buffer_of"):
        integer("buffer_limit", cfg.get("buffer_limit"), minimum=1, optional=True)
        of = cfg.buffer_of
        buffer_dirs = buffer_dirs_of(str(of) if isinstance(of, (str, Path)) else [str(d) for d in of])
    base = resolve_base(cfg)
    curve = None
    if cfg.get("checkpoints_of"):
        curve = checkpoint_curve(cfg, cfg.checkpoints_of, base)
        write_json(run_dir / "checkpoints.json", curve)
    if cfg.get("model_path"):
        model = model_ref(str(cfg.model_path))
    elif curve is not None:
        model = model_ref(curve["checkpoints"][-1]["model"])
    else:
        model = base
    label = str(cfg.get("label") or default_label(model, base, cfg.get("model_path")))
    if label == "base" and model.path != base.path:
        raise ConfigError(f"label: 'base' names θ0's row; pick another label for {model.path}")
    check_same_base(model, base, str(cfg.cache_dir))
    base_res = run_eval(cfg, base, base)
    rows = {"base": summarize("base", base_res, base_res, cfg)}
    if label != "base":
        rows[label] = summarize(label, run_eval(cfg, model, base), base_res, cfg)
    results = {**rows[label], "model": model.path, "base_model": base.path, "seed": int(cfg.seed),
               "suite": suite_names(cfg), "rows": rows}
    write_json(run_dir / "results.json", results)
    if buffer_dirs is not None:
        write_buffer_report(cfg, buffer_dirs, run_dir / "buffer.json")
    log_results(cfg, results, run_dir, curve)
    return results


def write_buffer_report(cfg: DictConfig, buffer_dirs: dict[int, Path], out: Path) -> dict[str, Any]:
    """:func:`~tms.evaluation.buffer_stats.buffer_report` of ``buffer_dirs`` for ``cfg``: the training task
    ``data.task``, the student = ``model_path`` (a run directory's ``model``) if given, ``buffer_limit``."""
    student = model_ref(str(cfg.model_path)).path if cfg.get("model_path") else None
    limit = cfg.get("buffer_limit")
    return buffer_report(buffer_dirs, student, instantiate(cfg.data.task), out=out,
                         limit=None if limit is None else int(limit), model_kwargs=model_kwargs(cfg),
                         batch_size=int(cfg.eval.get("batch_size", 64)))


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """What ``evaluate.py`` calls: set up the run directory, evaluate, print the table and paths."""
    out = setup(cfg)
    results = evaluate(cfg, out)
    names = results["suite"]
    print(f"\n{summary_table(results['rows'], names['retention'], names['target'])}\n")
    print(f"results:     {out / 'results.json'}")
    if (out / "checkpoints.json").is_file():
        print(f"checkpoints: {out / 'checkpoints.json'}")
    if (out / "buffer.json").is_file():
        print(f"buffer:      {out / 'buffer.json'}")
    print(f"model:       {results['model']}")
    print(f"run dir:     {out}")
    return results
