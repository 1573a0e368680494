"""The stage cache: every pipeline stage is a directory keyed by the config that determines it.

``<cache_dir>/<stage>/<hash>/`` holds a finished stage and its ``manifest.json`` (the key, seed,
package versions, status, timings and stage-specific info). While a stage runs it lives in
``<hash>.partial/``, which is renamed to ``<hash>/`` only when the stage succeeds, so a crash
never leaves something that looks finished. A re-run finds the partial directory and resumes
from what it holds (Lightning's ``last.ckpt``, complete harvest shards). A file lock per stage
keeps two processes (e.g. parallel sweep jobs) from building the same stage at once: the second
waits, then reuses the first one's result.

In a multi-process job (:mod:`tms.distributed`) the ranks go through the stages together: ``done``
is rank 0's answer, only rank 0 locks and publishes, and :meth:`Stage.ensure` runs a stage's body on
every rank (training) or on rank 0 alone (evaluation, θ0) while the others wait.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from tms.io import read_json, remove_stale, write_json

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


def config_hash(key: Any) -> str:
    """16 hex characters of the SHA-256 of the canonical JSON of ``key``."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("tms", "torch", "transformers", "lightning", "hydra-core", "datasets", "vllm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


class Stage:
    """One cached stage. ``key`` must contain everything that determines the stage's outputs."""

    def __init__(self, cache_dir: str | Path, name: str, key: dict[str, Any]) -> None:
        self.name, self.key = name, key
        self.hash = config_hash(key)
        self.root = Path(os.path.expanduser(str(cache_dir))) / name
        self.dir = self.root / self.hash
        self.partial = self.root / f"{self.hash}.partial"

    def __repr__(self) -> str:
        return f"Stage({self.name}/{self.hash})"

    @property
    def done(self) -> bool:
        """Whether the stage is finished. In a multi-process job this is rank 0's answer, broadcast
        (:func:`tms.distributed.agree`), so every rank takes the same branch; call it on every rank."""
        from tms import distributed

        return distributed.agree(self._complete_on_disk)

    def _complete_on_disk(self) -> bool:
        path = self.dir / MANIFEST
        return path.is_file() and read_json(path).get("status") == "complete"

    def manifest(self) -> dict[str, Any]:
        return read_json(self.dir / MANIFEST)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The stage's file lock; in a multi-process job only rank 0 takes it (the others follow rank 0)."""
        from tms import distributed

        if distributed.collective() and not distributed.is_zero():
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{self.hash}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def build(self, seed: int | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Yield ``(partial_dir, info)``; on success write the manifest and publish the stage.

        The caller fills ``info`` with stage-specific results (they go into the manifest). When
        ``<hash>.partial/`` already exists (a killed run) it is resumed from, after deleting the
        temporaries of writes that the kill interrupted. Call it while holding :meth:`lock`.

        In a multi-process job every rank enters the block (a training stage: they all take part in
        ``trainer.fit``); rank 0 prepares the partial directory, and publishes the stage with rank 0's
        ``info`` after every rank has left the block (barriers before and after).
        """
        from tms import distributed

        started = self._open() if distributed.is_zero() else 0.0
        distributed.barrier()  # the partial directory exists for every rank
        info: dict[str, Any] = {}
        yield self.partial, info
        distributed.barrier()  # every rank finished its part
        if distributed.is_zero():
            self._publish(seed, info, started)
        distributed.barrier()  # the stage is published for every rank

    def ensure(self, fill: Callable[[Path, dict[str, Any]], None], seed: int | None = None,
               ranks: str = "all") -> "Stage":
        """Build the stage with ``fill(partial_dir, info)`` unless it is done; returns it, done.

        ``ranks``: ``"all"`` (every rank of a multi-process job calls ``fill``, e.g. training or a
        data-parallel harvest) or ``"zero"`` (rank 0 alone, inside
        :func:`tms.distributed.rank_zero_section`, while the others wait). One process: the same.
        """
        from tms import distributed

        if ranks not in ("all", "zero"):
            raise ValueError(f"Stage.ensure(ranks={ranks!r}): expected 'all' or 'zero'")
        if self.done:
            log.info("%s: reusing %s", self.name, self.dir)
            return self
        with self.lock():
            if self.done:  # another process built it while we waited for the lock
                return self
            with self.build(seed=seed) as (out, info):
                if ranks == "all":
                    fill(out, info)
                elif distributed.is_zero():
                    with distributed.rank_zero_section():
                        fill(out, info)
                else:
                    distributed.release_memory()
        return self

    def _open(self) -> float:
        """Create (or resume) the partial directory; returns the start time."""
        if self.partial.is_dir():
            stale = remove_stale(self.partial)
            log.info("%s: resuming from %s (%d stale temporaries removed)", self, self.partial, len(stale))
        self.partial.mkdir(parents=True, exist_ok=True)
        started = time.time()
        write_json(self.partial / "manifest.partial.json",
                   {"stage": self.name, "hash": self.hash, "key": self.key, "status": "running", "started": started})
        return started

    def _publish(self, seed: int | None, info: dict[str, Any], started: float) -> None:
        """Write the manifest into the partial directory and rename it to the stage directory."""
        manifest = {
            "stage": self.name, "hash": self.hash, "key": self.key, "seed": seed, "status": "complete",
            "versions": package_versions(), "started": started, "finished": time.time(),
            "duration_s": round(time.time() - started, 3), "info": info,
        }
        (self.partial / "manifest.partial.json").unlink(missing_ok=True)
        write_json(self.partial / MANIFEST, manifest)
        if self.dir.exists():  # a stale, incomplete directory from an older layout
            import shutil

            shutil.rmtree(self.dir)
        os.replace(self.partial, self.dir)
