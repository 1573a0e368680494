"""Trajectory harvest: sample k completions per (checkpoint t, training prompt x) into H[t, x].

``harvest_checkpoint`` fills the buffer directory of one checkpoint shard by shard. Shard ``i``
holds prompts ``plan[i]`` and is generated with the seed ``derive_seed(seed, step, i)``, where ``step`` is the
checkpoint's optimiser step (0 for θ0), not its index t: the index depends on the grid a Stage 1 saves
(``sft.grid`` renumbers the checkpoints) while the step names the weights, so one checkpoint gets the same
samples under every grid. The buffer is a deterministic function of (checkpoint, prompts, sampling, k, seed,
shard size) and
an interrupted harvest resumes at the first missing shard with no duplicate and no missing
(t, x, k) row. The model is only loaded when some shard is missing. The same property lets the stage
cache regenerate one damaged shard of a finished harvest alone (:mod:`tms.core.cache`): shard ``i`` does
not depend on any other shard (the HF backend re-seeds each batch *within* a shard from the shard's
seed; vLLM seeds each request from it), so the repaired buffer equals the original row for row.

The ``score`` column is the verifier's: the info records :func:`tms.core.code_identity.verifier_digest`,
and :func:`rescore` refreshes the scores of a harvest made under another verifier for the consumers
that use them (``correct_only``) instead of regenerating the completions, which do not depend on it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from tms.data.buffer import read_buffer, shard_path, shard_plan, write_shard
from tms.core.code_identity import verifier_digest
from tms.data.tasks.base import Example, Task
from tms.generation.base import Generator, SamplingParams
from tms.core.seeds import derive_seed

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
            "tokens": 0, "seconds": 0.0,  # resumed shards may have been scored by another verifier: unknown
            "verifier": verifier_digest() if len(pending) == mine else None}
    if not pending:
        return info
    generator = make_generator()
    bar = tqdm(total=len(pending) * shard_size * k, desc=f"harvest t={t}", unit="compl", disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for i in pending:
            lo, hi = plan[i]
            comps = generator.generate(prompts[lo:hi], k, sampling, seed=derive_seed(seed, step, i))
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


def merge_info(parts: list[dict]) -> dict:
    """One manifest entry from the ranks' harvest infos: counts summed, rates over the slowest rank."""
    out = dict(parts[0])
    for key in ("resumed_shards", "completions", "tokens"):
        out[key] = sum(p[key] for p in parts)
    out["seconds"] = max(p["seconds"] for p in parts)
    for key, num in (("completions_per_s", "completions"), ("tokens_per_s", "tokens")):
        if any(key in p for p in parts):
            out[key] = round(out[num] / max(out["seconds"], 1e-9), 2)
    if len({p.get("verifier") for p in parts}) > 1:
        out["verifier"] = None
    if len(parts) > 1:
        out["ranks"] = len(parts)
    return out


def rescore(table, stage, task: Task | None):
    """``table`` (the rows of the harvest ``stage``) with its ``score`` column recomputed by ``task``'s
    verifier when the stage was harvested under another (or an unknown: resumed shards) verifier
    (:func:`tms.core.code_identity.verifier_digest`); unchanged when ``task`` is None or the verifier is the same."""
    import pyarrow as pa

    if task is None or table.num_rows == 0:
        return table
    recorded = (stage.manifest().get("info") or {}).get("verifier")
    if recorded == verifier_digest():
        return table
    log.info("%s: harvested under verifier %s, re-scoring its %d rows with the current verifier %s",
             stage, recorded, table.num_rows, verifier_digest())
    answers = {e.id: e.answer for e in task.examples("train")}
    scores = task.score(table.column("completion").to_pylist(), [answers[i] for i in table.column("example_id").to_pylist()])
    col = table.schema.get_field_index("score")
    return table.set_column(col, table.schema.field(col), pa.array(scores, type=pa.float64()))
