"""The stage graph: θ0 → Stage 1 SFT → harvest H[t, x] → student → evaluation.

Each stage is a cached directory (:mod:`tms.cache`) keyed by exactly the config that determines
its outputs plus the identity of the code that builds it (:mod:`tms.code_identity`), so a sweep over
α or p(t) pays for Stage 1 and the harvest once, a second identical invocation reuses everything, and
a code fix rebuilds the stages it affects (``cache_reuse=warn``: reuses them with a warning).
``run(cfg)`` is what ``python train.py`` calls.

Method kinds (``method.kind``):
    sft      θ0 → Stage 1 SFT on the references; the last checkpoint is the model.
    student  θ0 → [Stage 1 if the target source needs SFT checkpoints] → harvest → student
             (TMS, Self-SFT, Final-SFT: only ``data.target_source`` differs).
    rl       θ0 → GRPO / REINFORCE (see :mod:`tms.methods.rl`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tms.cache import Stage
from tms.io import write_json

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """Resolved plain-Python copy of a config node (for stage keys and manifests)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


@dataclass
class ModelRef:
    """A model every stage can load: its path and the identity used in stage keys."""

    path: str
    identity: Any


def stage(cfg: DictConfig, name: str, key: dict[str, Any], extra: tuple[str, ...] = ()) -> Stage:
    """The cached stage ``name`` with config ``key`` under ``cfg.cache_dir``, reused as ``cfg.cache_reuse`` says."""
    return Stage(cfg.cache_dir, name, key, reuse=str(cfg.get("cache_reuse") or "strict"), extra=extra)


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    m = cfg.model
    return {"dtype": m.get("dtype", "auto"), "attn_implementation": m.get("attn_implementation"),
            "trust_remote_code": bool(m.get("trust_remote_code", False)), "revision": m.get("revision")}


def local_fingerprint(path: str) -> dict[str, Any]:
    """Identity of a local model directory: its path and its weight files' sizes and mtimes."""
    p = Path(os.path.expanduser(path)).resolve()
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    return {"path": str(p), "weights": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]}


def resolve_base(cfg: DictConfig) -> ModelRef:
    """θ0: a hub id or local directory, a packaged GGUF file (``gguf``), or (``build``) the toy world built here."""
    m = cfg.model
    if m.get("name_or_path"):
        src = str(m.name_or_path)
        local = Path(os.path.expanduser(src))
        ident = local_fingerprint(src) if local.exists() else {"hub": src, "revision": m.get("revision")}
        return ModelRef(str(local) if local.exists() else src, ident)
    if m.get("gguf") is not None:  # a GGUF file in a pip package, converted once to an HF directory (tms.gguf)
        from tms.gguf import convert_cached

        return ModelRef(*convert_cached(plain(m.gguf), cfg.cache_dir, reuse=str(cfg.get("cache_reuse") or "strict")))
    if m.get("build") is None:
        raise ValueError("model.name_or_path, model.gguf and model.build are all null: nothing to load θ0 from")
    from tms.toy.world import build_base_model

    from tms.distributed import single_process

    def fill(out: Path, info: dict) -> None:  # rank 0 alone, one process: θ0 is part of the toy world, not of the job
        log.info("building the toy base model θ0 into %s", out)
        info.update(build_base_model(out, m.build, single_process(cfg.trainer), seed=int(m.build.seed)))

    stage = toy_base_stage(cfg).ensure(fill, seed=int(m.build.seed), ranks="zero")
    return ModelRef(str(stage.dir / "model"), {"stage": f"base/{stage.hash}"})


def toy_base_stage(cfg: DictConfig) -> Stage:
    """The cached stage of the toy world's θ0 (``model.build``), built or not."""
    return stage(cfg, "base", {"build": plain(cfg.model.build), "precision": cfg.trainer.precision})


def data_key(cfg: DictConfig) -> dict[str, Any]:
    d = plain(cfg.data)
    d.pop("target_source", None)
    return d


def train_key(cfg: DictConfig) -> dict[str, Any]:
    from tms.training import accumulation, world_size

    key = {"sft": plain(cfg.sft), "accumulate": accumulation(cfg.sft, cfg.trainer), "world_size": world_size(cfg.trainer),
           "precision": cfg.trainer.precision, "model": model_kwargs(cfg),
           "gradient_checkpointing": bool(cfg.model.get("gradient_checkpointing", False))}
    strategy = plain(cfg.trainer.get("strategy"))
    if strategy not in (None, "auto"):  # DDP / FSDP / FSDP2 change the numerics (sharding, mixed precision)
        key["strategy"] = strategy
    return key


def train_stage(cfg: DictConfig, name: str, key: dict[str, Any], init: ModelRef, source, buffer, T: int | None,
                num_checkpoints: int, grid: list[int] | None = None, extra: tuple[str, ...] = ()) -> Stage:
    """Build (or reuse) a training stage: SFT-style training of ``init`` on ``source`` targets.

    In a multi-process job every rank trains (``Stage.ensure``: rank 0 alone locks and publishes);
    ``grid`` (Stage 1 of a T sweep): save the union of the equally spaced grids of these T's;
    ``extra``: code parts added to the stage's code identity (:data:`tms.code_identity.PARTS`).
    """
    from tms.data.datamodule import PostTrainDataModule
    from tms.methods.sft import SFTModule
    from tms.models import load_tokenizer
    from tms.training import fit

    def fill(out: Path, info: dict) -> None:  # every rank of a multi-process job takes part in trainer.fit
        tok = load_tokenizer(init.path, trust_remote_code=bool(cfg.model.get("trust_remote_code", False)))
        dm = PostTrainDataModule(instantiate(cfg.data.task), source, batch_size=int(cfg.sft.batch_size),
                                 max_length=int(cfg.data.max_length), seed=int(cfg.seed),
                                 train_limit=cfg.data.get("train_limit"), val_limit=cfg.data.get("val_limit"),
                                 buffer=buffer, T=T).connect(tok)
        module = SFTModule(init.path, optimizer=instantiate(cfg.sft.optimizer), scheduler=instantiate(cfg.sft.scheduler),
                           model_kwargs=model_kwargs(cfg),
                           gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)))
        info.update(fit(module, dm, tok, out, cfg.sft, cfg.trainer, cfg.get("logger"), seed=int(cfg.seed),
                        num_checkpoints=num_checkpoints, name=name, **({"grid": grid} if grid else {})))
        info["train_examples"] = len(dm.train_examples)

    return stage(cfg, name, key, extra).ensure(fill, seed=int(cfg.seed), ranks="all")


def run_sft(cfg: DictConfig, base: ModelRef) -> Stage:
    """Stage 1: SFT of θ0 on the references, saving T equally spaced checkpoints."""
    from tms.data.sources import ReferenceSource

    return train_stage(cfg, "sft", sft_key(cfg, base), base, ReferenceSource(), None, None, int(cfg.sft.num_checkpoints),
                       grid=shared_grid(cfg))


def sft_key(cfg: DictConfig, base: ModelRef) -> dict[str, Any]:
    """Everything Stage 1 depends on (not the target source, α or p(t): sweeps over those share it).

    With ``sft.grid`` (a T sweep) the key holds the grid instead of T, so every T of the sweep shares it.
    """
    key = {"base": base.identity, "data": data_key(cfg), "train": train_key(cfg), "T": int(cfg.sft.num_checkpoints),
           "seed": int(cfg.seed)}
    grid = shared_grid(cfg)
    if grid:
        del key["T"], key["train"]["sft"]["num_checkpoints"]
        key["grid"] = grid
    return key


def shared_grid(cfg: DictConfig) -> list[int] | None:
    """``sft.grid``: the T values whose checkpoint grids one Stage 1 saves together (a T sweep), sorted; else None."""
    grid = cfg.sft.get("grid")
    return sorted({int(t) for t in grid}) if grid else None


def stage1_indices(sft: Stage | None, T: int, ts: list[int]) -> dict[int, int]:
    """Stage 1's checkpoint index of each t in ``ts`` (the t-th of T equally spaced checkpoints; 0 = θ0).

    The identity unless Stage 1 saved a shared grid (``sft.grid``): then checkpoint t of T is the one
    saved at step round(t·N/T) (:func:`tms.callbacks.checkpoint_steps`), which
    the grid contains, so a T-subset of one Stage 1 is exactly what a Stage 1 run with T would save.
    """
    traj = sft.manifest()["info"]["trajectory"] if sft is not None else {}
    if not traj.get("grid"):
        return {t: t for t in ts}
    from tms.callbacks import checkpoint_steps

    by_step = {int(e["step"]): int(k) for k, e in traj["checkpoints"].items()}
    steps = checkpoint_steps(int(traj["total_steps"]), int(T))
    return {t: (0 if t == 0 else by_step[steps[t - 1]]) for t in ts}


def checkpoint_ref(sft: Stage | None, base: ModelRef, t: int) -> tuple[ModelRef, int]:
    """Model and optimiser step of checkpoint t (0 = θ0)."""
    if t == 0:
        return base, 0
    entry = sft.manifest()["info"]["trajectory"]["checkpoints"][str(t)]
    return ModelRef(str(sft.dir / "checkpoints" / entry["path"]), {"stage": f"sft/{sft.hash}", "t": t}), int(entry["step"])


def harvest_key(cfg: DictConfig, model: ModelRef, t: int) -> dict[str, Any]:
    h = plain(cfg.harvest)
    for k in ("backend", "tensor_parallel_size", "gpu_memory_utilization", "checkpoints"):
        h.pop(k, None)  # the backend is keyed below; TP size and memory do not change the samples
    return {"model": model.identity, "t": int(t), "harvest": h, "data": data_key(cfg), "seed": int(cfg.seed),
            "backend": cfg.harvest.backend}


def run_harvest(cfg: DictConfig, base: ModelRef, sft: Stage | None, ts: list[int]) -> list[Stage]:
    """Harvest every checkpoint in ``ts`` (one cached stage per checkpoint); returns the stages.

    In a multi-process job the HF backend is data-parallel (rank r generates the shards i ≡ r mod
    world on its own device; the buffer is the same as one process's, shard seeds do not depend on
    the rank); vLLM (tensor-parallel over ``harvest.tensor_parallel_size`` GPUs) runs on rank 0 alone.
    """
    from tms import distributed
    from tms.data.formatting import prompt_ids
    from tms.generation.base import SamplingParams
    from tms.generation.factory import check_backend, make_generator
    from tms.harvest import check_complete, harvest_checkpoint, merge_info
    from tms.models import load_tokenizer

    check_backend(cfg.harvest.backend)
    task = instantiate(cfg.data.task)
    examples = task.examples("train", cfg.data.get("train_limit"))
    if cfg.harvest.get("prompt_subset"):
        examples = examples[: int(cfg.harvest.prompt_subset)]
    sampling = SamplingParams(temperature=float(cfg.harvest.temperature), top_p=float(cfg.harvest.top_p),
                              max_new_tokens=int(cfg.harvest.max_new_tokens))
    k = int(cfg.harvest.samples_per_prompt)
    parallel = cfg.harvest.backend == "hf"
    stages = []
    for t in ts:
        model, step = checkpoint_ref(sft, base, t)

        def fill(out: Path, info: dict, t: int = t, model: ModelRef = model, step: int = step) -> None:
            tok = load_tokenizer(base.path, trust_remote_code=bool(cfg.model.get("trust_remote_code")))
            prompts = [prompt_ids(tok, task.messages(e)) for e in examples]
            rank, world = (distributed.rank(), distributed.world()) if parallel else (0, 1)
            part = harvest_checkpoint(
                lambda: make_generator(cfg.harvest.backend, model.path, cfg.harvest, cfg.model, int(cfg.seed)),
                task, examples, prompts, out, t, step, sampling, k, int(cfg.seed), int(cfg.harvest.shard_size),
                rank=rank, world=world)
            parts = distributed.all_gather(part) if parallel else [part]  # every rank's shards are written
            if distributed.is_zero():
                info.update(merge_info(parts))
                info.update(check_complete(out, t, [e.id for e in examples], k))
                info["model"] = model.path

        harvest = stage(cfg, "harvest", harvest_key(cfg, model, t))
        stages.append(harvest.ensure(fill, seed=int(cfg.seed), ranks="all" if parallel else "zero"))
    return stages


def load_buffer(stages: list[Stage], relabel: dict[int, int] | None = None, prompt_subset: int | None = None,
                task=None):
    """One :class:`~tms.buffer.TrajectoryBuffer` over the per-checkpoint harvest stages.

    ``relabel`` maps Stage 1 checkpoint indices to the student's t (a T-subset of a shared grid,
    :func:`stage1_indices`); identity when None. ``prompt_subset``: the harvest covered only the first N
    training prompts (``harvest.prompt_subset``); otherwise every example must have samples. ``task``:
    re-score the stages whose verifier changed since they were harvested (:func:`tms.harvest.rescore`).
    """
    import pyarrow as pa

    from tms.buffer import TrajectoryBuffer, read_buffer, with_t
    from tms.harvest import rescore

    table = pa.concat_tables([rescore(read_buffer(s.dir), s, task) for s in stages])
    if relabel and any(k != v for k, v in relabel.items()):
        table = with_t(table, [relabel.get(int(t), int(t)) for t in table.column("t").to_pylist()])
    return TrajectoryBuffer(table, prompt_subset=prompt_subset)


def run_student(cfg: DictConfig, base: ModelRef, source, harvests: list[Stage], T: int,
                relabel: dict[int, int] | None = None) -> Stage:
    """Stage 2: a student from θ0 on the target source's draws (same hyperparameters as Stage 1)."""
    key = {"base": base.identity, "data": data_key(cfg), "source": plain(cfg.data.target_source),
           "harvest": sorted(s.hash for s in harvests), "train": train_key(cfg), "T": T,
           "num_checkpoints": int(cfg.student.num_checkpoints), "seed": int(cfg.seed)}
    verified = bool(cfg.data.target_source.get("correct_only"))  # then the verifier's scores pick the targets
    subset = cfg.harvest.get("prompt_subset")
    buffer = load_buffer(harvests, relabel, int(subset) if subset else None,
                         instantiate(cfg.data.task) if verified else None) if harvests else None
    return train_stage(cfg, "student", key, base, source, buffer, T, int(cfg.student.num_checkpoints),
                       extra=("verifiers",) if verified else ())


def final_checkpoint(stage: Stage) -> ModelRef:
    idx = stage.manifest()["info"]["trajectory"]
    last = idx["checkpoints"][str(idx["T"])]
    return ModelRef(str(stage.dir / "checkpoints" / last["path"]), {"stage": f"{stage.name}/{stage.hash}", "t": idx["T"]})


def eval_tasks(cfg: DictConfig) -> dict[str, Any]:
    return {name: instantiate(node) for name, node in cfg.eval.benchmarks.items()}


def run_eval(cfg: DictConfig, model: ModelRef, base: ModelRef) -> dict[str, Any]:
    """Absolute evaluation of one model (a cached stage; θ0's is computed once per suite)."""
    from tms.evaluation.suite import evaluate_model

    suite = plain(cfg.eval)
    suite.pop("benchmarks", None)
    key = {"model": model.identity, "base": base.identity, "suite": plain(cfg.eval), "pld_data": data_key(cfg),
           "seed": int(cfg.seed)}
    def fill(out: Path, info: dict) -> None:  # rank 0 alone in a multi-process job
        res = evaluate_model(model.path, suite, eval_tasks(cfg), base.path, instantiate(cfg.data.task),
                             model_kwargs(cfg), int(cfg.seed))
        write_json(out / "results.json", res)
        info["target"] = res["target"]

    done = stage(cfg, "eval", key).ensure(fill, seed=int(cfg.seed), ranks="zero")
    from tms.io import read_json

    return read_json(done.dir / "results.json")


def summarize(name: str, res: dict[str, Any], base_res: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    from tms.evaluation.suite import relative_metrics

    suite = plain(cfg.eval)
    return {"method": name, **res, **relative_metrics(res, base_res, suite)}


def run(cfg: DictConfig, run_dir: str | Path, validated: bool = False) -> dict[str, Any]:
    """The whole pipeline for ``cfg.method``; writes ``results.json`` and ``pipeline.json`` into ``run_dir``.

    The config is validated first unless the caller did (``validated=True``). In a multi-process job
    (:func:`tms.distributed.session`) every rank calls it; rank 0 writes the run directory.
    """
    from tms import distributed
    from tms.validation import validate

    run_dir = Path(run_dir)
    if not validated:
        validate(cfg)
    distributed.require_session(cfg.trainer)
    kind = cfg.method.kind
    base = resolve_base(cfg)
    stages: dict[str, Any] = {"base": base.path}
    sft = final = None
    T = int(cfg.sft.num_checkpoints)
    if kind == "sft":
        sft = run_sft(cfg, base)
        final = final_checkpoint(sft)
    elif kind == "student":
        source = instantiate(cfg.data.target_source)
        ts = source.required_checkpoints(T)
        if any(t > 0 for t in ts):
            sft = run_sft(cfg, base)
        idx = stage1_indices(sft, T, ts)  # the identity unless Stage 1 saved a shared grid (T sweep)
        harvests = run_harvest(cfg, base, sft, [idx[t] for t in ts]) if ts else []
        stages["harvest"] = {f"t={t}": str(s.dir) for t, s in zip(ts, harvests)}
        student = run_student(cfg, base, source, harvests, T, relabel={idx[t]: t for t in ts})
        stages["student"] = str(student.dir)
        final = final_checkpoint(student)
    elif kind == "rl":
        from tms.methods.rl import run_rl

        rl = run_rl(cfg, base)
        stages["rl"] = str(rl.dir)
        final = final_checkpoint(rl)
    else:
        raise ValueError(f"method.kind={kind!r}: expected sft, student or rl")
    if sft is not None:
        stages["sft"] = str(sft.dir)
    base_res = run_eval(cfg, base, base)
    rows = {"base": summarize("base", base_res, base_res, cfg)}
    sft_ref = final_checkpoint(sft) if sft is not None else cached_sft_final(cfg, base)
    if sft_ref is not None and kind != "sft":
        rows["sft"] = summarize("sft", run_eval(cfg, sft_ref, base), base_res, cfg)
    rows[cfg.method.name] = summarize(cfg.method.name, run_eval(cfg, final, base), base_res, cfg)
    from tms.evaluation.run import suite_names

    results = {**rows[cfg.method.name], "model": final.path, "seed": int(cfg.seed), "rows": rows,
               "suite": suite_names(cfg)}
    curve = None
    if sft is not None and cfg.get("eval_checkpoints"):  # SFT's checkpoint curve (target vs retention, KL, PLD per t)
        from tms.evaluation.run import checkpoint_curve

        curve = checkpoint_curve(cfg, sft.dir / "checkpoints", base)
    if distributed.is_zero():
        write_json(run_dir / "results.json", results)
        write_json(run_dir / "pipeline.json", {"stages": stages, "final_model": final.path, "seed": int(cfg.seed)})
        if sft is not None:
            link(run_dir / "checkpoints", sft.dir / "checkpoints")
        if curve is not None:
            write_json(run_dir / "checkpoints.json", curve)
        link(run_dir / "model", Path(final.path))
    return results


def cached_sft_final(cfg: DictConfig, base: ModelRef) -> ModelRef | None:
    """The SFT baseline's final model if Stage 1 with this config is already in the cache."""
    sft = stage(cfg, "sft", sft_key(cfg, base))
    return final_checkpoint(sft) if sft.done else None


def link(path: Path, target: Path) -> None:
    """A symlink in the run directory to a cached stage output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(Path(target).resolve(), target_is_directory=True)
