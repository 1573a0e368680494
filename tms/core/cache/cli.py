"""``python -m tms.core.cache``: list, verify, remove and garbage-collect the stages of the cache.

::

    python -m tms.core.cache ls      [--cache-dir DIR] [--runs DIR ...]
    python -m tms.core.cache verify  [--cache-dir DIR] [--full] [KIND/HASH ...]
    python -m tms.core.cache rm      [--cache-dir DIR] [--dependents] KIND/HASH ...
    python -m tms.core.cache gc      [--cache-dir DIR] [--runs DIR ...] [--dry-run] [--keep-partial]

``--cache-dir`` defaults to ``$TMS_CACHE``, else ``~/.cache/tms`` (as ``cache_dir`` in conf/train.yaml).

``ls`` prints one row per stage directory: kind, hash, status (``complete``; ``partial``: being built
or left by a killed run, ``partial*`` while a process holds its lock; ``corrupt``: the manifest does not
parse, or the files do not match it), code (``current``: built by the code installed now, from current
stages; ``other``: not current; ``superseded``: not current, and a newer stage replaces it, see gc), size,
age, and what references it: the stages whose config keys name its hash, and the run directories
whose ``pipeline.json`` names its directory (``run:<dir>``; searched under ``--runs``, default
``./outputs`` and ``./multirun``, at Hydra's depth).

``gc`` removes exactly

1. ``partial`` directories whose lock no running process holds (``--keep-partial`` keeps them: they are
   the resumable progress of a killed run, and a re-run of the same command continues from them);
2. ``complete`` stages that are *superseded* and *unreferenced*. Superseded (code ``superseded`` above):
   built by other code than the current one (its own, or that of a stage it was built from), and a newer
   stage of the same *lineage* exists: the same config, with the stages it takes as inputs compared by
   their own lineage, so after a fix to Stage 1's code the old Stage 1 *and* the old harvests, student
   and evaluations built from it are superseded by the new chain. Unreferenced: no kept stage's key
   and no run directory's ``pipeline.json`` names it (what it references is considered again once it goes).

and keeps everything else: every current or newest stage of a config, every referenced stage, and
``corrupt`` stages (``ls`` marks them; ``rm`` removes one, ``verify`` says what is wrong). It takes each
stage's lock while removing it and skips stages in use. ``--dry-run`` prints what it would remove. Lock
files are kept (removing a lock file another process waits on would let two processes build one stage).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tms.core import code_identity
from tms.core.cache import MANIFEST, config_hash, default_cache_dir, rebuild_hint, verify
from tms.core.io import read_json

HASH = re.compile(r"^[0-9a-f]{16}$")
RUN_GLOBS = ("*/*/pipeline.json", "*/*/*/pipeline.json")  # outputs/<date>/<time>/, multirun/<date>/<time>/<job>/


@dataclass
class Entry:
    kind: str
    hash: str
    path: Path
    status: str
    manifest: dict | None = None
    problem: str | None = None
    code: str = "-"
    referenced_by: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.hash}"

    @property
    def finished(self) -> float:
        return float((self.manifest or {}).get("finished") or self.path.stat().st_mtime)


@contextlib.contextmanager
def try_lock(root: Path, digest: str) -> Iterator[bool]:
    """Yield whether the stage's lock could be taken without waiting (False: a process is using it)."""
    path = root / f"{digest}.lock"
    if not path.exists():
        yield True
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def inspect(kind: str, path: Path, full: bool = False) -> Entry:
    digest = path.name.removesuffix(".partial")
    if path.name.endswith(".partial"):  # its key (manifest.partial.json) references the stages it is built from
        try:
            m = read_json(path / "manifest.partial.json")
        except (FileNotFoundError, ValueError):
            m = None
        with try_lock(path.parent, digest) as free:
            return Entry(kind, digest, path, "partial" if free else "partial*", m)
    try:
        m = read_json(path / MANIFEST)
    except (FileNotFoundError, ValueError) as err:
        return Entry(kind, digest, path, "corrupt", problem=str(err) if isinstance(err, ValueError) else "no manifest.json")
    if m.get("status") != "complete":
        return Entry(kind, digest, path, "corrupt", m, f"manifest status {m.get('status')!r}")
    problems = verify.check(path, m.get("files") or {}, full=full)
    if problems:
        return Entry(kind, digest, path, "corrupt", m, "; ".join(f"{rel}: {what}" for rel, what in problems))
    return Entry(kind, digest, path, "complete", m)


def scan(cache: Path, full: bool = False) -> list[Entry]:
    """Every stage directory of the cache, with status, code and references filled in."""
    entries = [inspect(kind.name, p, full) for kind in sorted(cache.iterdir()) if kind.is_dir()
               for p in sorted(kind.iterdir()) if p.is_dir() and HASH.match(p.name.removesuffix(".partial"))]
    by_hash = {e.hash: e for e in entries}
    for e in entries:
        for ref in sorted(stage_refs((e.manifest or {}).get("key"), by_hash) - {e.hash}):
            by_hash[ref].referenced_by.append(e.name)
    mark_code(entries)
    return entries


def stage_refs(key: Any, known: dict[str, Entry]) -> set[str]:
    """Hashes of known stages named anywhere in a config key (``"sft/<hash>"`` identities, harvest lists)."""
    found: set[str] = set()
    if isinstance(key, dict):
        for v in key.values():
            found |= stage_refs(v, known)
    elif isinstance(key, (list, tuple)):
        for v in key:
            found |= stage_refs(v, known)
    elif isinstance(key, str):
        tail = key.rstrip("/").rsplit("/", 1)[-1]
        if tail in known:
            found.add(tail)
    return found


def mark_code(entries: list[Entry]) -> None:
    """``current`` / ``other`` / ``superseded`` for every complete stage.

    *current*: built by the code installed now (its code identity) from current stages. *lineage*: the
    config key with every stage it references replaced by that stage's lineage, so the stages that
    a code change rebuilt (a new Stage 1, and the harvests, student and evaluations downstream of it,
    whose keys name the new hashes) share the lineage of the ones they replace. *superseded*: not
    current, and a newer complete stage of the same lineage exists.
    """
    done = {e.hash: e for e in entries if e.status == "complete"}
    cur: dict[str, bool] = {}
    lin: dict[str, str] = {}

    def current(e: Entry) -> bool:
        if e.hash not in cur:
            cur[e.hash] = False  # a (malformed) cycle ends here
            code = (e.manifest or {}).get("code") or {}
            own = bool(code) and code == code_identity.identity(e.kind, code.get("extra", ()))
            ups = stage_refs((e.manifest or {}).get("key"), done) - {e.hash}
            cur[e.hash] = own and all(current(done[h]) for h in ups)
        return cur[e.hash]

    def substitute(obj: Any, me: str) -> Any:
        if isinstance(obj, dict):
            return {k: substitute(v, me) for k, v in obj.items()}
        if isinstance(obj, list):
            out = [substitute(v, me) for v in obj]
            return sorted(out, key=str) if out != obj else out  # harvest lists are sorted by hash
        if isinstance(obj, str):
            tail = obj.rstrip("/").rsplit("/", 1)[-1]
            if tail in done and tail != me:
                return obj[: len(obj) - len(tail)] + "@" + lineage(done[tail])
        return obj

    def lineage(e: Entry) -> str:
        if e.hash not in lin:
            lin[e.hash] = e.hash  # cycle guard
            lin[e.hash] = f"{e.kind}:{config_hash(substitute((e.manifest or {}).get('key'), e.hash))}"
        return lin[e.hash]

    groups: dict[str, list[Entry]] = {}
    for e in done.values():
        e.code = "current" if current(e) else "other"
        groups.setdefault(lineage(e), []).append(e)
    for group in groups.values():
        newest = max(e.finished for e in group)
        for e in group:
            if e.code == "other" and e.finished < newest:
                e.code = "superseded"


def run_refs(cache: Path, run_roots: list[Path], entries: list[Entry]) -> None:
    """Add ``run:<dir>`` references from the run directories' ``pipeline.json`` files."""
    by_dir = {e.path.resolve(): e for e in entries}
    for root in run_roots:
        for pj in sorted({p for pattern in RUN_GLOBS for p in root.glob(pattern)}):
            try:
                paths = strings(read_json(pj))
            except ValueError:
                continue
            for s in paths:
                p = Path(s)
                for cand in (p, *p.parents):
                    if cand in by_dir:
                        ref = f"run:{pj.parent}"
                        if ref not in by_dir[cand].referenced_by:
                            by_dir[cand].referenced_by.append(ref)
                        break


def strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{seconds:.0f}s"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def listing(entries: list[Entry]) -> str:
    now = time.time()
    rows = [["KIND", "HASH", "STATUS", "CODE", "SIZE", "AGE", "REFERENCED BY"]]
    for e in entries:
        refs = e.referenced_by[:4] + ([f"+{len(e.referenced_by) - 4} more"] if len(e.referenced_by) > 4 else [])
        rows.append([e.kind, e.hash, e.status, e.code, human(verify.size_of(e.path)), age(now - e.finished),
                     ", ".join(refs) or "-"])
    return table(rows)


def collectable(entries: list[Entry], keep_partial: bool) -> list[tuple[Entry, str]]:
    """What ``gc`` removes, with the reason (see the module docstring)."""
    out = [(e, "partial, no process holds its lock") for e in entries if e.status == "partial" and not keep_partial]
    gone: set[str] = set()
    while True:  # a superseded stage referenced only by stages being removed goes too
        more = [e for e in entries if e.code == "superseded" and e.name not in gone
                and all(r in gone for r in e.referenced_by)]
        if not more:
            return out
        for e in more:
            gone.add(e.name)
            out.append((e, "superseded by a newer stage with the same config, unreferenced"))


def dependents(entries: list[Entry], targets: list[Entry]) -> list[Entry]:
    """The stages built from ``targets``, transitively (their keys name a target's hash)."""
    by_name = {e.name: e for e in entries}
    seen, todo = {e.name for e in targets}, [e.name for e in targets]
    out: list[Entry] = []
    while todo:
        for ref in by_name[todo.pop()].referenced_by:
            if ref in by_name and ref not in seen:
                seen.add(ref)
                todo.append(ref)
                out.append(by_name[ref])
    return out


def remove(e: Entry) -> bool:
    """Remove a stage directory under its lock (rename, then delete); False if a process holds the lock."""
    with try_lock(e.path.parent, e.hash) as free:
        if not free:
            return False
        trash = e.path.with_name(f".{e.path.name}.rm-{os.getpid()}")
        os.replace(e.path, trash)
        shutil.rmtree(trash)
        return True


def find(cache: Path, names: list[str]) -> list[Path]:
    out = []
    for name in names:
        kind, _, digest = name.strip("/").rpartition("/")
        hits = [p for p in cache.glob(f"{kind or '*'}/{digest}*") if p.is_dir() and
                p.name.removesuffix(".partial") == digest]
        if not hits:
            raise SystemExit(f"no stage {name} in {cache}")
        out += hits
    return out


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)  # --cache-dir before or after the subcommand
    common.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS, help="default: $TMS_CACHE, else ~/.cache/tms")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("--runs", type=Path, nargs="*", default=None, help="run roots (default: ./outputs ./multirun)")
    parser = argparse.ArgumentParser(prog="python -m tms.core.cache", description=__doc__.split("\n\n")[0],
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", parents=[common, runs], help="list the stages")
    p = sub.add_parser("verify", parents=[common], help="check stages against their manifests")
    p.add_argument("--full", action="store_true", help="full SHA-256 of every weight file too")
    p.add_argument("stages", nargs="*")
    p = sub.add_parser("rm", parents=[common], help="remove stages (KIND/HASH)")
    p.add_argument("--dependents", action="store_true", help="also the stages built from them, transitively")
    p.add_argument("stages", nargs="+")
    p = sub.add_parser("gc", parents=[common, runs], help="remove partial and superseded, unreferenced stages")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--keep-partial", action="store_true")
    args = parser.parse_args(argv)
    given = getattr(args, "cache_dir", None)
    cache = Path(os.path.expanduser(str(given))) if given else default_cache_dir()
    if not cache.is_dir():
        print(f"no cache at {cache}")
        return 0 if args.command in ("ls", "gc") else 1
    entries = scan(cache, full=getattr(args, "full", False))
    if args.command == "rm":
        chosen = {p.resolve() for p in find(cache, args.stages)}
        targets = [e for e in entries if e.path.resolve() in chosen]
        deps = dependents(entries, targets)
        for e in targets + (deps if args.dependents else []):
            print(f"removed {e.path}" if remove(e) else f"skipped {e.path}: in use by a running process")
        if deps and not args.dependents:
            print(f"kept {len(deps)} stage(s) built from it: {', '.join(e.name for e in deps)}. A rebuilt stage has "
                  "the same hash and is bitwise the same on CPU, not necessarily on GPU; pass --dependents to "
                  "remove them too")
        return 0
    if args.command == "verify":
        chosen = {p.resolve() for p in find(cache, args.stages)} if args.stages else None
        bad = 0
        for e in entries:
            if chosen is None or e.path.resolve() in chosen:
                bad += e.status == "corrupt"
                hint = f"  {e.problem}. {rebuild_hint(cache, e.kind, e.hash)}" if e.status == "corrupt" else ""
                print(f"{e.name}: {e.status}{hint}")
        return 1 if bad else 0
    run_refs(cache, [r for r in (args.runs if args.runs is not None else [Path("outputs"), Path("multirun")])
                     if r.is_dir()], entries)
    if args.command == "ls":
        print(listing(entries) if entries else f"{cache}: no stages")
        return 0
    doomed = collectable(entries, args.keep_partial)
    freed = 0
    for e, why in doomed:
        size = verify.size_of(e.path)
        if args.dry_run:
            print(f"would remove {e.name}{'.partial' if e.status == 'partial' else ''} ({human(size)}): {why}")
            freed += size
        elif remove(e):
            print(f"removed {e.name}{'.partial' if e.status == 'partial' else ''} ({human(size)}): {why}")
            freed += size
        else:
            print(f"skipped {e.name}: in use by a running process")
    corrupt = [e for e in entries if e.status == "corrupt"]
    print(f"{'would free' if args.dry_run else 'freed'} {human(freed)} ({len(doomed)} director"
          f"{'y' if len(doomed) == 1 else 'ies'}); {len(corrupt)} corrupt stage(s) kept"
          + "".join(f"\n  {e.name}: {e.problem}" for e in corrupt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
