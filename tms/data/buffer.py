"""The trajectory buffer H[t, x]: Parquet shards, one row per (t, x, k).

Layout of a buffer directory::

    t=000/shard-00000.parquet   # θ0 samples (Self-SFT)
    t=001/shard-00000.parquet   # samples of SFT checkpoint 1
    ...

Each shard holds the completions of a contiguous block of prompts for one checkpoint and is
written atomically (temporary name + rename), so a shard on disk is always complete. The shard
plan is a pure function of (number of prompts, shard size), which is what lets an interrupted
harvest resume without duplicate or missing (t, x, k) rows.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("prompt", pa.string()),
        ("t", pa.int32()),
        ("step", pa.int64()),
        ("sample_index", pa.int32()),
        ("completion", pa.string()),
        ("num_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("score", pa.float64()),
    ]
)


def t_dir(root: str | Path, t: int) -> Path:
    return Path(root) / f"t={int(t):03d}"


def shard_path(root: str | Path, t: int, shard: int) -> Path:
    return t_dir(root, t) / f"shard-{int(shard):05d}.parquet"


def shard_plan(n_prompts: int, shard_size: int) -> list[tuple[int, int]]:
    """Half-open prompt ranges ``[start, stop)`` of each shard."""
    if shard_size < 1:
        raise ValueError(f"harvest.shard_size must be >= 1, got {shard_size}")
    return [(s, min(s + shard_size, n_prompts)) for s in range(0, n_prompts, shard_size)]


def write_shard(path: Path, rows: dict[str, list]) -> None:
    """Write one shard atomically: to ``<path>.tmp`` then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pydict(rows, schema=SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def with_t(table: pa.Table, ts: Iterable[int]) -> pa.Table:
    """``table`` with its ``t`` column replaced by ``ts`` (one value per row): a stage's rows carry the Stage 1
    checkpoint index they sampled, a student mixes them under its own t (a T-subset of a shared grid)."""
    col = table.schema.get_field_index("t")
    return table.set_column(col, SCHEMA.field("t"), pa.array([int(t) for t in ts], type=SCHEMA.field("t").type))


def read_buffer(root: str | Path, ts: Iterable[int] | None = None) -> pa.Table:
    """All rows of the buffer (or of checkpoints ``ts``), sorted by (t, example_id, sample_index)."""
    root = Path(root)
    dirs = [t_dir(root, t) for t in ts] if ts is not None else sorted(root.glob("t=*"))
    files = [f for d in dirs for f in sorted(d.glob("shard-*.parquet"))]
    if not files:
        return SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files])
    return table.sort_by([("t", "ascending"), ("example_id", "ascending"), ("sample_index", "ascending")])


class TrajectoryBuffer:
    """In-memory view of H: ``samples(t, example_id) -> [(completion, score), ...]`` ordered by k.

    ``prompt_subset``: the harvest covered only the first N training prompts on purpose
    (``harvest.prompt_subset``), so a target source may train the other examples on references.
    None (the default): the buffer claims every training example, and a source refuses one it lacks.
    """

    def __init__(self, table: pa.Table, prompt_subset: int | None = None) -> None:
        self.table, self.prompt_subset = table, prompt_subset
        self._index: dict[tuple[int, str], list[tuple[str, float | None]]] = defaultdict(list)
        cols = table.select(["t", "example_id", "completion", "score"]).to_pydict()
        for t, ex, comp, score in zip(cols["t"], cols["example_id"], cols["completion"], cols["score"]):
            self._index[(int(t), ex)].append((comp, score))

    @classmethod
    def load(cls, root: str | Path, ts: Iterable[int] | None = None) -> "TrajectoryBuffer":
        return cls(read_buffer(root, ts))

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def checkpoints(self) -> list[int]:
        return sorted({t for t, _ in self._index})

    def has(self, t: int, example_id: str) -> bool:
        return (int(t), example_id) in self._index

    def samples(self, t: int, example_id: str) -> list[tuple[str, float | None]]:
        key = (int(t), example_id)
        if key not in self._index:
            raise KeyError(f"trajectory buffer has no sample for checkpoint t={t}, example {example_id!r}")
        return self._index[key]
