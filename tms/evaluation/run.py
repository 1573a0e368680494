"""``python evaluate.py``: evaluate one model (and optionally SFT's checkpoint curve) against θ0.

What it does, given the composed ``conf/eval.yaml`` (the same tree as ``train.yaml``):

1. θ0 = :func:`tms.pipeline.resolve_base` (the configured model: a hub id, a local directory or the
   toy world's cached base stage).
2. The model to evaluate = ``model_path`` — a model directory, a pipeline run directory (its
   ``model`` link is used) or a hub id — or, when null, the last checkpoint of ``checkpoints_of``, or
   else θ0 itself. A path inside the stage cache gets the same identity the pipeline gives it, so
   its ``eval`` stage is shared with ``python train.py`` (see :func:`model_ref`).
3. Both are evaluated through :func:`tms.pipeline.run_eval` (cached per model and suite: θ0's
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

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tms.io import read_json, write_json
from tms.pipeline import ModelRef, local_fingerprint, resolve_base, run_eval, summarize

log = logging.getLogger(__name__)


def suite_names(cfg: DictConfig) -> dict[str, Any]:
    """The benchmark roles of the suite: ``target``, ``other_targets`` (minus the target), ``retention``."""
    target = str(cfg.eval.target)
    others = [str(b) for b in (cfg.eval.get("other_targets") or []) if str(b) != target]
    return {"name": cfg.eval.get("name"), "target": target, "other_targets": others,
            "retention": [str(b) for b in (cfg.eval.get("retention") or [])]}


def check_suite(cfg: DictConfig) -> None:
    """The suite before any compute (:func:`tms.validation.validate` and :func:`evaluate` call it).

    Every benchmark it names (target, other targets, retention) is in ``eval.benchmarks`` and builds
    (constructors check their arguments; no data is loaded); the generation, sampling (``eval.sampling``:
    Pass@k, SC-Acc) and KL settings are in range.
    """
    from tms.data.tasks.base import SPLITS
    from tms.evaluation.metrics import _ESTIMATORS
    from tms.validation import ConfigError, build, check_sampling, integer, require

    names = suite_names(cfg)
    e = cfg.eval
    known = set(e.benchmarks)
    for key, listed in (("eval.target", [names["target"]]), ("eval.other_targets", names["other_targets"]),
                        ("eval.retention", names["retention"])):
        missing = [b for b in listed if b not in known]
        if missing:
            raise ConfigError(f"{key}: {missing} not in eval.benchmarks ({sorted(known)}); the target is the training "
                              "task's benchmark, so data= and eval= must agree")
    integer("eval.max_new_tokens", e.get("max_new_tokens"))
    integer("eval.batch_size", e.get("batch_size", 64))
    integer("eval.limit", e.get("limit"), optional=True)
    integer("eval.pld_limit", e.get("pld_limit"), optional=True)
    require(e.get("split", "test") in SPLITS, "eval.split", f"must be one of {SPLITS}, got {e.get('split')!r}")
    s = e.sampling
    check_sampling(s, "eval.sampling", "n", max_new_tokens=False)
    ks = s.get("ks")
    ok = ks is not None and len(ks) > 0 and all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= s.n
                                                for k in ks)
    require(ok, "eval.sampling.ks", f"must be a non-empty list of integers k in [1, eval.sampling.n={s.n}] (Pass@k "
            f"needs n >= k samples), got {ks!r}; lower them or raise eval.sampling.n")
    integer("eval.sampling.limit", s.get("limit"), optional=True)
    kl = e.kl
    integer("eval.kl.limit", kl.get("limit"), optional=True)
    integer("eval.kl.n", kl.get("n", 1))
    estimator = kl.get("estimator", "k1")
    require(estimator in _ESTIMATORS, "eval.kl.estimator", f"must be one of {sorted(_ESTIMATORS)}, got {estimator!r}")
    for name, node in e.benchmarks.items():
        build(node, f"eval.benchmarks.{name}")


def _stage_of(directory: Path) -> dict[str, Any] | None:
    """``{"stage": "<name>/<hash>"}`` of a finished cached stage directory, else None."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return None
    m = read_json(manifest)
    if m.get("status") != "complete" or directory.name != m.get("hash"):
        return None
    return {"stage": f"{m['stage']}/{m['hash']}"}


def model_ref(path: str) -> ModelRef:
    """A :class:`ModelRef` for a model given by path (or hub id), with the pipeline's identity if cached.

    * ``<cache>/<stage>/<hash>/checkpoints/<dir>`` listed in that stage's ``trajectory.json`` → identity
      ``{"stage": "<stage>/<hash>", "t": t}`` (as :func:`tms.pipeline.checkpoint_ref` / ``final_checkpoint``);
    * ``<cache>/base/<hash>/model`` → ``{"stage": "base/<hash>"}`` (as :func:`tms.pipeline.resolve_base`);
    * a pipeline run directory → its ``model`` link, resolved as above;
    * another local directory → its weight files' fingerprint; anything else → a hub id.
    """
    p = Path(os.path.expanduser(path))
    if (p / "model").is_dir() and not (p / "config.json").is_file():
        p = p / "model"
    if not p.exists():
        return ModelRef(path, {"hub": path, "revision": None})
    p = p.resolve()
    index = p.parent / "trajectory.json"
    if p.parent.name == "checkpoints" and index.is_file() and (stage := _stage_of(p.parent.parent)):
        for t, entry in read_json(index)["checkpoints"].items():
            if entry["path"] == p.name:
                return ModelRef(str(p), {**stage, "t": int(t)})
    if p.name == "model" and (stage := _stage_of(p.parent)) and stage["stage"].startswith("base/"):
        return ModelRef(str(p), stage)
    return ModelRef(str(p), local_fingerprint(str(p)))


def checkpoints_dir(path: str | Path) -> Path:
    """The directory holding ``trajectory.json``: given itself, a stage directory or a run directory."""
    p = Path(os.path.expanduser(str(path)))
    for cand in (p, p / "checkpoints"):
        if (cand / "trajectory.json").is_file():
            return cand.resolve()
    raise FileNotFoundError(f"checkpoints_of={path}: no trajectory.json in it or in its checkpoints/ subdirectory")


def checkpoint_curve(cfg: DictConfig, ckpt_dir: str | Path, base: ModelRef) -> dict[str, Any]:
    """θ0 (t = 0) and each of the T checkpoints evaluated on the suite (one cached ``eval`` stage each).

    Returns ``{"T", "total_steps", "suite", "checkpoints": [{t, step, model, target, scores, retention,
    retention_mean, forgetting, xfer, kl_to_base, kl_from_base, pld, pld_train}, ...]}``: ``kl_to_base`` is
    KL(π_t ‖ π_0) and ``kl_from_base`` the forward KL(π_0 ‖ π_t) (None for a cached result that predates
    it), ``pld`` is the held-out PLD of the evaluation (eq. 4.2, same definition for every model),
    ``pld_train`` the one logged during SFT.
    """
    ckpt_dir = checkpoints_dir(ckpt_dir)
    index = read_json(ckpt_dir / "trajectory.json")
    base_res = run_eval(cfg, base, base)
    names = suite_names(cfg)
    points = []
    for t in range(int(index["T"]) + 1):
        entry = index["checkpoints"].get(str(t), {}) if t else {}
        ref = base if t == 0 else model_ref(str(ckpt_dir / entry["path"]))
        row = summarize(f"t={t}", run_eval(cfg, ref, base), base_res, cfg)
        ret = row["retention"]
        points.append({
            "t": t, "step": int(entry.get("step", 0)), "model": ref.path, "target": row["target"],
            "scores": row["scores"], "retention": ret,
            "retention_mean": sum(ret.values()) / len(ret) if ret else None,
            "forgetting": row["forgetting"], "xfer": row["xfer"], "kl_to_base": row["kl_to_base"],
            "kl_from_base": row.get("kl_from_base"),
            "pld": row.get("pld"), "pld_train": {k: entry[k] for k in ("pld", "nll_token") if k in entry} or None,
        })
        log.info("checkpoint t=%d: target %.3f, retention %s", t, row["target"], points[-1]["retention_mean"])
    return {"T": int(index["T"]), "total_steps": index.get("total_steps"), "suite": names,
            "checkpoints_dir": str(ckpt_dir), "checkpoints": points}


def check_same_base(model: ModelRef, base: ModelRef, cache_dir: str) -> None:
    """Warn when a cached trained model's stage was built from another θ0 than the configured one."""
    ident = model.identity if isinstance(model.identity, dict) else {}
    if "stage" not in ident or "t" not in ident:
        return
    manifest = Path(os.path.expanduser(cache_dir)) / ident["stage"] / "manifest.json"
    trained_from = read_json(manifest)["key"].get("base") if manifest.is_file() else None
    if trained_from is not None and trained_from != base.identity:
        log.warning("%s was trained from θ0 %s, not from the configured θ0 %s: its Δ and KL-to-base are against "
                    "the configured one (compose the run's own config, e.g. the same experiment=)",
                    model.path, trained_from, base.identity)


def default_label(model: ModelRef, base: ModelRef, given: str | None = None) -> str:
    """``base`` for θ0; a run directory's method; ``<stage>@t=<t>`` for a cached checkpoint; else the dir name."""
    if model.path == base.path:
        return "base"
    run_results = Path(os.path.expanduser(str(given or ""))) / "results.json"
    if given and run_results.is_file() and read_json(run_results).get("method"):
        return str(read_json(run_results)["method"])
    ident = model.identity
    if isinstance(ident, dict) and "stage" in ident:
        name = str(ident["stage"]).split("/")[0]
        return f"{name}@t={ident['t']}" if "t" in ident else name
    return Path(model.path).name


def evaluate(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Evaluate the model of ``cfg`` (see the module docstring); writes and returns ``results.json``."""
    run_dir = Path(run_dir)
    check_suite(cfg)
    buffer_dirs = None
    if cfg.get("buffer_of"):
        from tms.evaluation.buffer_stats import buffer_dirs_of
        from tms.validation import integer

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
        from tms.validation import ConfigError

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
    from tms.evaluation.wandb_log import log_results

    log_results(cfg, results, run_dir, curve)
    return results


def write_buffer_report(cfg: DictConfig, buffer_dirs: dict[int, Path], out: Path) -> dict[str, Any]:
    """:func:`~tms.evaluation.buffer_stats.buffer_report` of ``buffer_dirs`` for ``cfg``: the training task
    ``data.task``, the student = ``model_path`` (a run directory's ``model``) if given, ``buffer_limit``."""
    from hydra.utils import instantiate

    from tms.evaluation.buffer_stats import buffer_report
    from tms.pipeline import model_kwargs

    student = model_ref(str(cfg.model_path)).path if cfg.get("model_path") else None
    limit = cfg.get("buffer_limit")
    return buffer_report(buffer_dirs, student, instantiate(cfg.data.task), out=out,
                         limit=None if limit is None else int(limit), model_kwargs=model_kwargs(cfg),
                         batch_size=int(cfg.eval.get("batch_size", 64)))


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """What ``evaluate.py`` calls: set up the run directory, evaluate, print the table and paths."""
    from tms.cli import setup
    from tms.evaluation.table import summary_table

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

