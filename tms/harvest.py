"""Trajectory harvest: sample k completions per (checkpoint t, training prompt x) into H[t, x].

``harvest_checkpoint`` fills the buffer directory of one checkpoint shard by shard. Shard ``i``
holds prompts ``plan[i]`` and is generated with the seed ``derive_seed(seed, t, i)``, so the
buffer is a deterministic function of (checkpoint, prompts, sampling, k, seed, shard size) and
an interrupted harvest resumes at the first missing shard with no duplicate and no missing
(t, x, k) row. The model is only loaded when some shard is missing.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from tms.buffer import read_buffer, shard_path, shard_plan, write_shard
from tms.data.tasks.base import Example, Task
from tms.generation.base import Generator, SamplingParams
from tms.generation.hf import derive_seed

log = logging.getLogger(__name__)


def harvest_checkpoint(
    make_generator: Callable[[], Generator],
    task: Task,
    examples: Sequence[Example],
    prompts: Sequence[Sequence[int]],
    out_root: str | Path,
    t: int,
    step: int,
    sampling: SamplingParams,
    k: int,
    seed: int,
    shard_size: int,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """Write ``out_root/t=XXX/shard-*.parquet`` for checkpoint ``t``; returns throughput info.

    Each row: example_id, prompt, t, step, sample_index, completion, num_tokens, finish_reason
    and the verifier score of the completion. With ``world > 1`` this process writes only the shards
    ``i ≡ rank (mod world)`` (data-parallel harvest; the counts in the info are this rank's).
    """
    plan = shard_plan(len(examples), shard_size)
    pending = [i for i in range(len(plan)) if i % world == rank and not shard_path(out_root, t, i).exists()]
    mine = len(range(rank, len(plan), world))
    info = {"t": int(t), "shards": len(plan), "resumed_shards": mine - len(pending), "completions": 0,
            "tokens": 0, "seconds": 0.0}
    if not pending:
        return info
    generator = make_generator()
    bar = tqdm(total=len(pending) * shard_size * k, desc=f"harvest t={t}", unit="compl", disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for i in pending:
            lo, hi = plan[i]
            comps = generator.generate(prompts[lo:hi], k, sampling, seed=derive_seed(seed, t, i))
            exs = [examples[lo + c.prompt_index] for c in comps]
            scores = task.score([c.text for c in comps], [e.answer for e in exs])
            write_shard(shard_path(out_root, t, i), {
                "example_id": [e.id for e in exs],
                "prompt": [e.prompt for e in exs],
                "t": [int(t)] * len(comps),
                "step": [int(step)] * len(comps),
                "sample_index": [c.sample_index for c in comps],
                "completion": [c.text for c in comps],
                "num_tokens": [c.num_tokens for c in comps],
                "finish_reason": [c.finish_reason for c in comps],
                "score": scores,
            })
            info["completions"] += len(comps)
            info["tokens"] += sum(c.num_tokens for c in comps)
            bar.update(len(comps))
            bar.set_postfix(compl_per_s=f"{info['completions'] / max(time.perf_counter() - t0, 1e-9):.1f}")
    finally:
        bar.close()
        generator.close()
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["completions_per_s"] = round(info["completions"] / max(info["seconds"], 1e-9), 2)
    info["tokens_per_s"] = round(info["tokens"] / max(info["seconds"], 1e-9), 2)
    return info


def check_complete(out_root: str | Path, t: int, example_ids: Sequence[str], k: int) -> dict:
    """Verify that checkpoint ``t`` holds exactly one row per (x, k): no duplicate, none missing."""
    table = read_buffer(out_root, [t])
    got = list(zip(table.column("example_id").to_pylist(), table.column("sample_index").to_pylist()))
    want = {(e, j) for e in example_ids for j in range(k)}
    if len(got) != len(set(got)):
        raise RuntimeError(f"harvest t={t} in {out_root}: duplicate (example, sample) rows")
    if set(got) != want:
        missing = len(want - set(got))
        raise RuntimeError(f"harvest t={t} in {out_root}: {missing} missing and {len(set(got) - want)} unexpected rows")
    scores = [s for s in table.column("score").to_pylist() if s is not None]
    return {"rows": len(got), "mean_score": (sum(scores) / len(scores)) if scores else None,
            "stop_fraction": sum(r == "stop" for r in table.column("finish_reason").to_pylist()) / max(len(got), 1)}
