"""The evaluation stage: one model on the suite against θ0 (cached per model and suite), and SFT's checkpoint curve.

``run_eval`` is the cached ``eval`` stage (:func:`tms.evaluation.suite.evaluate_model` writes its ``results.json``),
or with ``eval.harness=lm_eval`` the cached ``lm_eval`` stage (:func:`run_lm_eval`: lm-evaluation-harness writes the
same ``scores`` / ``target`` / ``samples``);
``summarize`` adds the Δ metrics against θ0 (:func:`tms.evaluation.suite.relative_metrics`); ``model_ref`` gives a
model named by path the identity the pipeline gives it, so ``python evaluate.py`` shares the pipeline's stages.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.config.eval import eval_backend, evaluated, harness, suite_names
from tms.core.io import read_json, write_json
from tms.core.keys import plain, stage
from tms.core.tracking import LOG_SAMPLES, log_samples
from tms.evaluation.lm_eval import evaluate_lm_eval, include_paths, installed_version, model_args
from tms.evaluation.suite import evaluate_model, relative_metrics
from tms.generation.factory import make_generator
from tms.stages.common import ModelRef, data_key, local_fingerprint, logprob_chunk, model_kwargs

log = logging.getLogger(__name__)


def eval_tasks(cfg: DictConfig) -> dict[str, Any]:
    return {name: instantiate(node) for name, node in cfg.eval.benchmarks.items()}


def run_eval(cfg: DictConfig, model: ModelRef, base: ModelRef) -> dict[str, Any]:
    """Absolute evaluation of one model (a cached stage; θ0's is computed once per suite)."""
    if harness(cfg) == "lm_eval":
        return run_lm_eval(cfg, model)
    e = plain(cfg.eval)
    suite = {k: v for k, v in e.items() if k != "benchmarks"}  # what evaluate_model reads
    backend, tasks, chunk, keep = eval_backend(cfg), eval_tasks(cfg), logprob_chunk(cfg), log_samples(cfg, "eval")
    key = {"model": model.identity, "base": base.identity, "suite": {k: v for k, v in e.items() if k != "backend"},
           "pld_data": data_key(cfg), "seed": int(cfg.seed)}
    if backend != "hf":  # another engine samples the greedy and Pass@k completions (hf keeps the keys it always had)
        key["backend"] = backend
    graders = {name: task.grader_identity() for name, task in tasks.items()
               if hasattr(task, "grader_identity")}  # e.g. IFEval: the checker auto picked here, langdetect or not
    if graders:
        key["graders"] = graders
    if keep != LOG_SAMPLES["eval"]:  # results.json keeps another number of sampled completions
        key["keep_samples"] = keep
    if chunk:
        key["logprob_chunk"] = chunk

    def fill(out: Path, info: dict) -> None:  # rank 0 alone in a multi-process job
        engine = None if backend == "hf" else lambda: make_generator(
            backend, model.path, {**plain(cfg.harvest), "batch_size": cfg.eval.get("batch_size", 64)},
            {**plain(cfg.model), "generation_dtype": None}, int(cfg.seed))  # evaluation samples in model.dtype
        res = evaluate_model(model.path, suite, tasks, base.path, instantiate(cfg.data.task), model_kwargs(cfg),
                             int(cfg.seed), logprob_chunk=chunk, engine=engine, keep_samples=keep)
        write_json(out / "results.json", res)
        info["target"] = res["target"]

    done = stage(cfg, "eval", key).ensure(fill, seed=int(cfg.seed), ranks="zero")
    return read_json(done.dir / "results.json")


#: the eval settings an lm_eval run reads (the stage key holds them; the rest of eval names roles and benchmarks)
LM_EVAL_SETTINGS = ("num_fewshot", "batch_size", "limit", "gen_kwargs", "apply_chat_template", "fewshot_as_multiturn",
                    "system_instruction", "bootstrap_iters", "include_defaults", "split", "max_new_tokens", "device")


def lm_eval_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings of :func:`tms.evaluation.lm_eval.evaluate_lm_eval` from ``cfg.eval`` (model type = the backend)."""
    e = plain(cfg.eval)
    out = {k: e.get(k) for k in LM_EVAL_SETTINGS}
    out.update(model=eval_backend(cfg), model_args=e.get("model_args") or {},
               include_path=include_paths(e.get("include_path")))
    return out


def lm_eval_isolated(cfg: DictConfig) -> bool:
    """``eval.isolated``: lm-eval in a child process; null: for the vllm model type (not in the key: same numbers)."""
    value = cfg.eval.get("isolated")
    return eval_backend(cfg) == "vllm" if value is None else bool(value)


def files_digest(dirs: list[str]) -> dict[str, str]:
    """``{path: sha256}`` of the task files (YAML, Python, data) under ``dirs``: a user's lm-eval tasks in a stage key."""
    out = {}
    for d in dirs:
        for f in sorted(Path(d).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out


def run_lm_eval(cfg: DictConfig, model: ModelRef) -> dict[str, Any]:
    """The absolute lm-eval scores of one model: the cached ``lm_eval`` stage (rank 0 runs it).

    Key: the model's identity, the evaluated benchmarks' specs (lm-eval task and metric, or the exported tms task),
    the settings (:func:`lm_eval_settings`), lm-eval's model arguments, the seed, the lm-eval version and the files of
    ``eval.include_path``. No θ0 in it: lm-eval's numbers are absolute, so θ0's row is shared by every model.
    """
    names = suite_names(cfg)
    benchmarks = {b: plain(cfg.eval.benchmarks[b]) for b in evaluated(cfg)}
    settings = lm_eval_settings(cfg)
    vllm = {k: cfg.harvest.get(k) for k in ("tensor_parallel_size", "gpu_memory_utilization")}
    args = model_args(settings["model"], "", model_kwargs(cfg), int(cfg.seed), settings["model_args"], None, vllm)
    keep = log_samples(cfg, "eval")
    key = {"model": model.identity, "lm_eval": installed_version(), "benchmarks": benchmarks, "settings": settings,
           "model_args": {k: v for k, v in args.items() if k not in ("pretrained", "device")}, "seed": int(cfg.seed),
           "keep_samples": keep}
    if settings["include_path"]:
        key["include_files"] = files_digest(settings["include_path"])

    def fill(out: Path, info: dict) -> None:  # rank 0 alone in a multi-process job
        res = evaluate_lm_eval(model.path, benchmarks, settings, model_kwargs(cfg), int(cfg.seed),
                               target=names["target"], keep_samples=keep, vllm=vllm, raw_out=out / "lm_eval.json",
                               isolated=lm_eval_isolated(cfg))
        write_json(out / "results.json", res)
        info["target"] = res["target"]

    done = stage(cfg, "lm_eval", key).ensure(fill, seed=int(cfg.seed), ranks="zero")
    return read_json(done.dir / "results.json")


def summarize(name: str, res: dict[str, Any], base_res: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """A model's row: its absolute results and the Δ against θ0's (roles as :func:`suite_names` gives them)."""
    suite = {**plain(cfg.eval), **suite_names(cfg)}
    return {"method": name, **res, **relative_metrics(res, base_res, suite)}


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
      ``{"stage": "<stage>/<hash>", "t": t}`` (as :func:`tms.stages.sft.checkpoint_ref` / ``final_checkpoint``);
    * ``<cache>/base/<hash>/model`` → ``{"stage": "base/<hash>"}`` (as :func:`tms.stages.base_model.resolve_base`);
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
            "forgetting": row["forgetting"], "xfer": row["xfer"], "kl_to_base": row.get("kl_to_base"),
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
