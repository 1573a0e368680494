"""What a finished stage must hold, recorded at publish time and checked before every reuse.

``manifest["files"]`` maps each file of the stage (relative path) to its size; harvest shards
(``*.parquet``) and weight files (``*.safetensors``, ``*.bin``) also get their SHA-256, weights in
addition their ``mtime_ns`` and a *sample* digest (SHA-256 of the first and last MiB). W&B's run
files (``wandb/``) are not recorded: W&B's service may still write them after the stage is published.

Checked on every reuse (:func:`check`):

* every recorded file exists with its recorded size (one ``stat`` per file);
* every harvest shard's full SHA-256 (shards are text and small: a few MB per checkpoint);
* every weight file's sample digest, and its full SHA-256 only when its mtime changed since the
  stage was published (a file rewritten in place), or with ``full=True``
  (``python -m tms.core.cache verify --full``).

Why not every weight checksum on every reuse (measured on this machine's 2 CPU cores): SHA-256 reads
~1.3 GB/s (1 GiB in 0.8 s); Stage 1 of a 7B model holds T = 10 checkpoints of 15 GB, so a full check
would add ~2 minutes (far more on a network file system) to *every* job of an α sweep that reuses it,
while size + mtime + the 2 MiB sample digest take ~2 ms per file and catch what actually happens (a
deleted, truncated, half-copied or overwritten file). On the smoke toy world the weights are ~100 KB,
so the check of all 13 stages of two TMS runs (θ0, Stage 1, 3 harvests, 2 students, 6 evaluations)
takes ~3 ms either way (``tests/test_cache.py::test_verification_cost_on_the_toy``). Publishing pays the
full checksums once (the same ~2 minutes after hours of 7B training; negligible for the toy).
"""
from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path
from typing import Any

WEIGHTS = ("*.safetensors", "*.bin")
SHARDS = ("*.parquet",)
UNTRACKED = ("wandb/*",)
#: damage to these files is repaired by regenerating them alone (the stage's fill resumes and redoes just them)
REPAIRABLE = {"harvest": ("t=*/shard-*.parquet",)}
SAMPLE = 1 << 20
CHUNK = 1 << 22


def _match(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], p) for p in patterns)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sample_digest(path: Path, size: int) -> str:
    """SHA-256 of the first and the last MiB (the whole file when it is shorter than 2 MiB)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        h.update(fh.read(SAMPLE))
        if size > SAMPLE:
            fh.seek(max(SAMPLE, size - SAMPLE))
            h.update(fh.read(SAMPLE))
    return h.hexdigest()


def record(root: Path, skip: tuple[str, ...] = ("manifest.json", "manifest.partial.json")) -> dict[str, dict[str, Any]]:
    """``{relative path: {size[, sha256, mtime_ns, sample]}}`` of every file under ``root``."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or p.is_symlink() or rel in skip or _match(rel, UNTRACKED):
            continue
        st = p.stat()
        entry: dict[str, Any] = {"size": st.st_size}
        if _match(rel, SHARDS + WEIGHTS):
            entry["sha256"] = sha256(p)
        if _match(rel, WEIGHTS):
            entry.update(mtime_ns=st.st_mtime_ns, sample=sample_digest(p, st.st_size))
        out[rel] = entry
    return out


def check(root: Path, files: dict[str, dict[str, Any]], full: bool = False) -> list[tuple[str, str]]:
    """``[(relative path, what is wrong)]`` of the files of ``root`` that do not match ``files`` (see the module)."""
    problems: list[tuple[str, str]] = []
    for rel, want in sorted(files.items()):
        p = root / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            problems.append((rel, "missing"))
            continue
        if st.st_size != want["size"]:
            problems.append((rel, f"{st.st_size} bytes, the manifest says {want['size']} (truncated or replaced)"))
            continue
        if "sha256" not in want:
            continue
        weights = "sample" in want
        if weights and not full and st.st_mtime_ns == want.get("mtime_ns"):
            if sample_digest(p, st.st_size) != want["sample"]:
                problems.append((rel, "checksum of its first/last MiB differs from the manifest's (corrupt)"))
        elif sha256(p) != want["sha256"]:
            problems.append((rel, "SHA-256 differs from the manifest's (corrupt)"))
    return problems


def repairable(kind: str, problems: list[tuple[str, str]]) -> bool:
    """Whether every problem is a file that the stage regenerates alone (a harvest shard)."""
    return bool(problems) and all(_match(rel, REPAIRABLE.get(kind, ())) for rel, _ in problems)


def size_of(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
