"""The harvest: H[t, x], k sampled completions of every training prompt at each checkpoint t (one cached stage per t),
and the trajectory buffer a student reads them through."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.config.hardware import resolve_backend
from tms.core import distributed
from tms.core.cache import Stage
from tms.core.keys import plain, stage
from tms.data.buffer import TrajectoryBuffer, read_buffer, with_t
from tms.data.formatting import prompt_ids
from tms.generation.base import SamplingParams
from tms.generation.factory import check_backend, generation_dtype, make_generator
from tms.generation.harvest import (
    check_complete,
    harvest_checkpoint,
    merge_info,
    rescore,
)
from tms.models.loading import load_tokenizer
from tms.stages.common import ModelRef, data_key
from tms.stages.sft import checkpoint_ref


def harvest_key(cfg: DictConfig, model: ModelRef, t: int) -> dict[str, Any]:
    h = plain(cfg.harvest)
    for k in ("backend", "tensor_parallel_size", "gpu_memory_utilization", "checkpoints"):
        h.pop(k, None)  # the backend is keyed below; TP size and memory do not change the samples
    return {"model": model.identity, "t": int(t), "harvest": h, "data": data_key(cfg), "seed": int(cfg.seed),
            "backend": cfg.harvest.backend, "dtype": generation_dtype(cfg.model)}  # the samples depend on it


def run_harvest(cfg: DictConfig, base: ModelRef, sft: Stage | None, ts: list[int]) -> list[Stage]:
    """Harvest every checkpoint in ``ts`` (one cached stage per checkpoint); returns the stages.

    In a multi-process job the HF backend is data-parallel (rank r generates the shards i ≡ r mod
    world on its own device; the buffer is the same as one process's, shard seeds do not depend on
    the rank); vLLM (tensor-parallel over ``harvest.tensor_parallel_size`` GPUs) runs on rank 0 alone.
    """
    resolve_backend(cfg)  # harvest.backend=auto (validate() has done it already in a pipeline run)
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
    """One :class:`~tms.data.buffer.TrajectoryBuffer` over the per-checkpoint harvest stages.

    ``relabel`` maps Stage 1 checkpoint indices to the student's t (a T-subset of a shared grid,
    :func:`stage1_indices`); identity when None. ``prompt_subset``: the harvest covered only the first N
    training prompts (``harvest.prompt_subset``); otherwise every example must have samples. ``task``:
    re-score the stages whose verifier changed since they were harvested (:func:`tms.generation.harvest.rescore`).
    """
    table = pa.concat_tables([rescore(read_buffer(s.dir), s, task) for s in stages])
    if relabel and any(k != v for k, v in relabel.items()):
        table = with_t(table, [relabel.get(int(t), int(t)) for t in table.column("t").to_pylist()])
    return TrajectoryBuffer(table, prompt_subset=prompt_subset)
