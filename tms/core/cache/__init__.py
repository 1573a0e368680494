"""The stage cache: every pipeline stage is a directory keyed by its config and the code that builds it.

``<cache_dir>/<stage>/<hash>/`` holds a finished stage and its ``manifest.json``. The hash covers the
stage's config key (what the caller passes, recorded as ``key``; its hash is ``config_hash``) and the
code identity of the stage kind (:mod:`tms.core.code_identity`: a hand-bumped version, the tms version
and a SHA-256 of the source files the stage's outputs depend on, recorded as ``code``, with the
per-file digests in ``code_files``). The manifest also holds the seed, package versions, status,
timings, stage info, and ``files``: what the stage must hold (:mod:`tms.core.cache.verify`).

While a stage runs it lives in ``<hash>.partial/``, renamed to ``<hash>/`` only when the stage
succeeds, so a crash never leaves something that looks finished; a re-run resumes from what the
partial directory holds (Lightning's ``last.ckpt``, complete harvest shards). A file lock per stage
keeps two processes (parallel sweep jobs) from building the same stage at once.

Before a finished stage is reused it is checked against its manifest. A missing or corrupt harvest
shard is regenerated alone (the stage is reopened as ``<hash>.partial/`` and its fill redoes just that
shard, which is seeded independently of the others); any other damage, or a manifest that is not
JSON, raises :class:`StageCorrupt` naming the file and the command that rebuilds the stage.

``reuse`` (the config's ``cache_reuse``): ``strict`` builds a stage whose code identity changed anew
(and says where the old one is); ``warn`` reuses a finished stage with the same config hash but other
code, with a warning naming the stage, its directory and what changed. ``python -m tms.core.cache`` lists,
verifies and garbage-collects the cache (:mod:`tms.core.cache.cli`).

In a multi-process job (:mod:`tms.core.distributed`) the ranks go through the stages together: ``done``
is rank 0's answer, broadcast, only rank 0 locks and publishes, and :meth:`Stage.ensure` runs a
stage's body on every rank (training) or on rank 0 alone (evaluation, θ0) while the others wait.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tms.core import code_identity, distributed
from tms.core.cache import verify
from tms.core.io import read_json, remove_stale, write_json

MANIFEST = "manifest.json"
REUSE_MODES = ("strict", "warn")
log = logging.getLogger(__name__)


class StageCorrupt(RuntimeError):
    """A finished stage whose files do not match its manifest (or whose manifest is unreadable)."""


def config_hash(key: Any) -> str:
    """16 hex characters of the SHA-256 of the canonical JSON of ``key``."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$TMS_CACHE``, else ``~/.cache/tms`` (the default of ``cache_dir`` in conf/train.yaml)."""
    return Path(os.path.expanduser(os.environ.get("TMS_CACHE") or "~/.cache/tms"))


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("tms", "torch", "transformers", "lightning", "hydra-core", "datasets", "vllm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def rebuild_hint(cache_root: Path, name: str, digest: str) -> str:
    return (f"Rebuild it: python -m tms.core.cache rm {name}/{digest} --cache-dir {cache_root} "
            f"(or rm -rf {cache_root / name / digest}), then re-run the same command.")


class Stage:
    """One cached stage. ``key`` must contain everything in the config that determines its outputs.

    ``extra``: optional code parts the stage adds (:data:`tms.core.code_identity.PARTS`, e.g. ``verifiers``);
    ``reuse``: ``strict`` or ``warn`` (see the module docstring).
    """

    def __init__(self, cache_dir: str | Path, name: str, key: dict[str, Any], reuse: str = "strict",
                 extra: Sequence[str] = ()) -> None:
        if reuse not in REUSE_MODES:
            raise ValueError(f"cache_reuse={reuse!r}: expected one of {list(REUSE_MODES)}")
        self.name, self.key, self.reuse, self.extra = name, key, reuse, sorted(set(extra))
        self.code = code_identity.identity(name, self.extra)
        self.config_hash = config_hash(key)
        self.hash = config_hash({"config": key, "code": self.code})
        self.cache_root = Path(os.path.expanduser(str(cache_dir)))
        self.root = self.cache_root / name
        self.dir = self.root / self.hash
        self.partial = self.root / f"{self.hash}.partial"
        self._repair: list[tuple[str, str]] = []
        self._expected: dict[str, dict] = {}
        self._told: set[str] = set()

    def __repr__(self) -> str:
        return f"Stage({self.name}/{self.hash})"

    @property
    def done(self) -> bool:
        """Whether the stage is finished and intact (or, with ``reuse="warn"``, a same-config stage is).

        In a multi-process job this is rank 0's answer, broadcast (:func:`tms.core.distributed.agree`), so
        every rank takes the same branch; call it on every rank. Raises :class:`StageCorrupt` for damage
        that cannot be repaired; damaged harvest shards make it False (``ensure`` regenerates them).
        """

        state, detail = distributed.agree(self._inspect)
        self._repair = []
        if state == "corrupt":
            raise StageCorrupt(detail)
        if state == "repair":
            self._repair = [tuple(p) for p in detail]
            return False
        if state == "complete" and detail != self.hash:  # cache_reuse=warn: another code identity
            self.hash, self.dir = detail, self.root / detail
        return state == "complete"

    def _inspect(self) -> tuple[str, Any]:
        """``("complete", hash) | ("repair", problems) | ("corrupt", message) | ("missing", None)``."""
        state = self._check(self.dir)
        if state[0] != "missing":
            return state
        older = self._same_config()
        for digest, m in older if self.reuse == "warn" else []:
            if self._check(self.root / digest)[0] == "complete":
                self._say(log.warning, "%s: cache_reuse=warn: reusing %s, built with the same config by other code "
                          "(%s); its outputs may differ from what this code would produce", self.name,
                          self.root / digest, self._changes(m))
                return "complete", digest
        if older:
            self._say(log.info, "%s: %s has the same config but was built by other code (%s); building %s "
                      "(cache_reuse=warn would reuse it)", self.name, self.root / older[0][0], self._changes(older[0][1]),
                      self.dir)
        return state

    def _changes(self, manifest: dict) -> str:
        return "; ".join(code_identity.changes(manifest.get("code"), self.code, manifest.get("code_files"),
                                               code_identity.file_digests(self.name, self.extra)))

    def _say(self, level: Callable, msg: str, *args: Any) -> None:
        if msg % args not in self._told:  # done is asked before and after the lock: say it once
            self._told.add(msg % args)
            level(msg, *args)

    def _check(self, directory: Path) -> tuple[str, Any]:
        path = directory / MANIFEST
        if not path.is_file():
            return "missing", None
        try:
            m = read_json(path)
        except ValueError as err:
            hint = rebuild_hint(self.cache_root, self.name, directory.name)
            return "corrupt", f"{self.name} stage {directory}: {err}. {hint}"
        if m.get("status") != "complete":
            return "missing", None
        problems = verify.check(directory, m.get("files") or {})
        if not problems:
            return "complete", directory.name
        if verify.repairable(self.name, problems) and directory == self.dir:
            return "repair", problems
        listed = "; ".join(f"{directory / rel}: {what}" for rel, what in problems)
        return "corrupt", (f"{self.name} stage {directory} does not match its manifest: {listed}. "
                           f"{rebuild_hint(self.cache_root, self.name, directory.name)}")

    def _same_config(self) -> list[tuple[str, dict]]:
        """Finished stages of this kind with this config hash and another code identity, newest first."""
        found = []
        for path in self.root.glob(f"*/{MANIFEST}") if self.root.is_dir() else []:
            digest = path.parent.name
            if digest == self.hash or digest.endswith(".partial"):
                continue
            try:
                m = read_json(path)
            except ValueError:
                continue
            if m.get("status") == "complete" and (m.get("config_hash") or config_hash(m.get("key"))) == self.config_hash:
                found.append((digest, m))
        return sorted(found, key=lambda e: -float(e[1].get("finished") or 0))

    def manifest(self) -> dict[str, Any]:
        return read_json(self.dir / MANIFEST)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The stage's file lock; in a multi-process job only rank 0 takes it (the others follow rank 0)."""

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
        temporaries of writes that the kill interrupted; a finished stage with damaged harvest shards
        (see :attr:`done`) is reopened without them. Call it while holding :meth:`lock`.

        In a multi-process job every rank enters the block (a training stage: they all take part in
        ``trainer.fit``); rank 0 prepares the partial directory, and publishes the stage with rank 0's
        ``info`` after every rank has left the block (barriers before and after).
        """

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
        :func:`tms.core.distributed.rank_zero_section`, while the others wait). One process: the same.
        """

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
        """Create (or resume, or reopen for repair) the partial directory; returns the start time."""
        if self._repair:
            self._reopen()
        if self.partial.is_dir():
            stale = remove_stale(self.partial)
            log.info("%s: resuming from %s (%d stale temporaries removed)", self, self.partial, len(stale))
        self.partial.mkdir(parents=True, exist_ok=True)
        started = time.time()
        write_json(self.partial / "manifest.partial.json",
                   {"stage": self.name, "hash": self.hash, "key": self.key, "status": "running", "started": started})
        return started

    def _reopen(self) -> None:
        """Move a finished stage with damaged (regenerable) files back to ``<hash>.partial/`` without them."""
        files = self.manifest().get("files") or {}
        self._expected = {rel: files[rel] for rel, _ in self._repair if rel in files}
        for rel, what in self._repair:
            log.warning("%s: %s is damaged (%s): regenerating it alone", self, self.dir / rel, what)
            (self.dir / rel).unlink(missing_ok=True)
        (self.dir / MANIFEST).unlink()
        if self.partial.exists():  # a leftover beside a finished stage: the finished one is the reference
            shutil.rmtree(self.partial)
        os.replace(self.dir, self.partial)
        self._repair = []

    def _publish(self, seed: int | None, info: dict[str, Any], started: float) -> None:
        """Write the manifest into the partial directory and rename it to the stage directory."""
        files = verify.record(self.partial)
        for rel, want in self._expected.items():
            same = files.get(rel, {}).get("sha256") == want.get("sha256")
            (log.info if same else log.warning)("%s: regenerated %s %s", self, rel, "is identical to the original"
                                                if same else "differs from the original (a nondeterministic backend?)")
        self._expected = {}
        manifest = {
            "stage": self.name, "hash": self.hash, "config_hash": self.config_hash, "key": self.key,
            "code": self.code, "code_files": code_identity.file_digests(self.name, self.extra), "seed": seed,
            "status": "complete", "versions": package_versions(), "started": started, "finished": time.time(),
            "duration_s": round(time.time() - started, 3), "info": info, "files": files,
        }
        (self.partial / "manifest.partial.json").unlink(missing_ok=True)
        write_json(self.partial / MANIFEST, manifest)
        if self.dir.exists():  # a stale, incomplete directory from an older layout
            shutil.rmtree(self.dir)
        os.replace(self.partial, self.dir)
