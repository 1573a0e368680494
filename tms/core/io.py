"""Atomic file and directory writes: a crash leaves either the old state or the finished new one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from tms.core.redact import redact


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to ``final``.

    On an exception the temporary directory is removed and ``final`` is untouched. An existing
    ``final`` is replaced only after the new directory is complete (``overwrite=True``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{final} already exists")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


STALE_PATTERNS = (".*.tmp-*", ".*.old-*", "*.tmp")  # what atomic_dir, write_json, write_shard and checkpoints leave


def remove_stale(root: str | Path) -> list[Path]:
    """Delete the temporaries of atomic writes that a killed process left under ``root``; returns them.

    Only call it while no other process writes under ``root`` (the stage lock guarantees that).
    """
    found = sorted({p for pattern in STALE_PATTERNS for p in Path(root).rglob(pattern)}, key=lambda p: len(p.parts))
    removed: list[Path] = []
    for p in found:
        if any(parent in removed for parent in p.parents):
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename), without credentials (:func:`tms.core.redact.redact`)."""

    obj = redact(obj)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CorruptJSON(ValueError):
    """A JSON file that does not parse (truncated, or not JSON); the message names the file."""


def read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path``; :class:`CorruptJSON` (a ValueError naming the file) if it does not parse."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptJSON(f"{path} is not valid JSON ({err}; {len(data)} bytes): truncated or corrupt") from err
