"""The code part of a stage's cache key: which source files each stage kind's outputs depend on.

A stage's hash (:class:`tms.cache.Stage`) covers its config key *and* :func:`identity` of its kind::

    {"version": "<kind>/<VERSIONS[kind]>",   # bumped by hand for a semantic change outside the files below
     "tms": "<package version>",
     "source": "<16 hex>"}                  # SHA-256 over (path, SHA-256 of the bytes) of MODULES[kind]

so a fix to a loss, the data code or a verifier rebuilds exactly the stages whose outputs it can change.
Paths are relative to the ``tms`` package and sorted, and the bytes are hashed as they are on disk, so
the identity is the same on every machine that has the same sources (no mtimes, no absolute paths).
File digests are computed once per process (:func:`file_digest`); :func:`clear_cache` forgets them.

How the lists were chosen (read the stage's ``fill`` in :mod:`tms.pipeline` and what it imports):

* **TRAINING** is the loop every training stage runs (:func:`tms.training.fit`, its callbacks,
  checkpoint IO, the non-finite guard, strategies, the optimiser schedule, model loading, the losses
  and the SFT LightningModule). **DATA** is the data module, target sources, formatting and the task
  modules (prompts, references, splits), *without* the verifier-only code in **VERIFIERS**, but with
  the source of ``rewards.last_boxed`` (MATH's gold answer: it decides which examples exist), the one
  piece of ``rewards.py`` that shapes data. The toy world's answer extraction lives in
  ``toy/skills.py`` next to its generators, so on the toy an extractor fix rebuilds everything.
* θ0 ``base`` (the toy world) = ``tms/toy/*`` + TRAINING + DATA. Its manifest's skill accuracy is
  computed with the evaluation code, which is deliberately left out: it is a note, not the model.
* Stage 1 ``sft`` = TRAINING + DATA; the ``student`` also ``buffer.py`` (its view of H). A student with
  ``data.target_source.correct_only=true`` filters on the harvest's verifier scores, so it adds the
  ``verifiers`` part (see :func:`identity` ``extra``); :func:`tms.harvest.rescore` refreshes stale scores.
* ``harvest`` = ``harvest.py`` + ``buffer.py`` + the generation backends + DATA (the prompts). The
  ``score`` column is the verifier's, but the completions are not, so a verifier fix does not
  regenerate the harvest; the verifier digest is recorded in its manifest instead.
* ``rl`` = the RL modules, their losses and rewards, the verifiers (the reward *is* the verifier),
  the rollout generator, TRAINING and DATA.
* ``eval`` = ``evaluation/suite.py`` and ``metrics.py`` (what writes ``results.json``), the generation
  backends, DATA and VERIFIERS. Reports, plots, tables and W&B logging post-process results.json
  and are not hashed, nor is ``evaluation/buffer_stats.py`` (``buffer.json``: diagnostics of a harvest
  buffer written straight into a run directory by ``evaluate.py buffer_of=``, not a cached stage; it
  imports ``suite.py``, never the other way round).
* ``gguf`` = the converter and model loading (its config key also holds ``CONVERTER_VERSION``).

Orchestration is not hashed (:data:`NOT_HASHED`): ``pipeline.py`` (keys, wiring), the cache, ``io.py``
(atomic writes), ``distributed.py``, ``cli.py``, validation, tracking and redaction. A change there that
changes a stage's *outputs* (e.g. a ``fill`` passing another argument) must bump that stage's entry in
:data:`VERSIONS`. ``tests/test_cache.py`` checks that every tms module a hashed file imports is hashed
for that kind or declared here (:data:`NOT_HASHED`, :data:`NOT_FOLLOWED`, the verifiers). Stages that take
other stages as inputs carry those stages' hashes in their config keys, so a change cascades downstream.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Iterable

#: the root the paths below are relative to (tests point it at a modified copy of the package)
PACKAGE = Path(__file__).resolve().parent

#: per stage kind: bump by hand when a stage's outputs change for a reason the hashed files do not show
VERSIONS = {"base": "1", "gguf": "1", "sft": "1", "student": "1", "harvest": "1", "rl": "1", "eval": "1"}

VERIFIERS = ("rewards.py", "data/tasks/ifeval_checks.py", "data/tasks/safety_judge.py")
TRAINING = ("training.py", "callbacks.py", "optim.py", "resume.py", "numerics.py", "models.py", "strategies.py",
            "losses.py", "methods/base.py", "methods/sft.py")
#: ``file:name,name`` hashes only those top-level definitions: MATH's gold answer (which decides which training
#: examples exist) is ``rewards.last_boxed``; the rest of rewards.py only grades
DATA = ("data/*.py", "data/tasks/*.py", "toy/tasks.py", "toy/skills.py", "rewards.py:last_boxed,_BOXED")
GENERATION = ("generation/*.py", "models.py", "data/formatting.py", "losses.py")
RL = ("methods/rl.py", "methods/rl_config.py", "methods/rl_stage.py", "rl_losses.py", "rl_rewards.py",
      "evaluation/metrics.py")

#: the source files (globs relative to PACKAGE) each stage kind's outputs depend on; VERIFIERS only where listed
MODULES: dict[str, tuple[str, ...]] = {
    "base": ("toy/*.py",) + TRAINING + DATA,
    "sft": TRAINING + DATA,
    "student": ("buffer.py",) + TRAINING + DATA,
    "harvest": ("harvest.py", "buffer.py") + GENERATION + DATA,
    "rl": RL + TRAINING + DATA + GENERATION + VERIFIERS,
    "eval": ("evaluation/__init__.py", "evaluation/suite.py", "evaluation/metrics.py") + GENERATION + DATA + VERIFIERS,
    "gguf": ("gguf.py", "models.py", "data/formatting.py", "losses.py"),
}
#: imported by hashed files but not hashed on purpose: orchestration, IO wrappers, config checks (see above)
NOT_HASHED = ("io.py", "errors.py", "redact.py", "tracking.py", "distributed.py", "validation.py", "input_checks.py", "cli.py",
              "pipeline.py", "code_identity.py", "cache/*.py")
#: per kind, imports whose results are notes in the manifest, not outputs (θ0's skill accuracy); the
#: verifiers are not followed from the task modules of kinds that do not grade
NOT_FOLLOWED = {"base": ("generation/*.py", "evaluation/*.py")}
#: optional parts a stage adds by config (``identity(kind, extra=[...])``)
PARTS: dict[str, tuple[str, ...]] = {"verifiers": VERIFIERS}


@functools.lru_cache(maxsize=None)
def tms_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("tms")
    except md.PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "unknown"


def files(kind: str, extra: Iterable[str] = ()) -> list[str]:
    """The sorted package-relative paths hashed for ``kind`` (+ ``extra`` parts); [] for an unknown kind."""
    return list(_files(str(PACKAGE), kind, tuple(sorted(set(extra)))))


@functools.lru_cache(maxsize=None)  # once per process (and package root)
def _files(package: str, kind: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    root = Path(package)
    patterns = list(MODULES.get(kind, ()))
    for part in extra:
        patterns += PARTS[part]
    found = {p.relative_to(root).as_posix() for pat in patterns if ":" not in pat for p in root.glob(pat) if p.is_file()}
    found -= set(VERIFIERS) - set(patterns)  # a verifier only where it is named
    return tuple(sorted(found | {p for p in patterns if ":" in p}))


@functools.lru_cache(maxsize=None)
def _digest(path: str, names: str = "") -> str:
    data = Path(path).read_bytes()
    if names:  # the source text of these top-level definitions only, in the order given
        import ast

        text = data.decode()
        nodes = {getattr(t, "id", None) or getattr(n, "name", None): n for n in ast.parse(text).body
                 for t in (getattr(n, "targets", None) or [n])}
        missing = [name for name in names.split(",") if name not in nodes]
        if missing:
            raise KeyError(f"tms.code_identity: {path} defines no top-level {missing}; update code_identity.DATA")
        data = "\n".join(ast.get_source_segment(text, nodes[name]) for name in names.split(",")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def file_digest(rel: str) -> str:
    """16 hex characters of the SHA-256 of the bytes of ``PACKAGE/rel`` (``file.py:a,b``: of the source
    of its top-level definitions ``a`` and ``b``), once per process and path."""
    path, _, names = rel.partition(":")
    return _digest(str(PACKAGE / path), names)


def clear_cache() -> None:
    _digest.cache_clear()
    _files.cache_clear()


def file_digests(kind: str, extra: Iterable[str] = ()) -> dict[str, str]:
    """``{relative path: digest}`` of the files of ``kind``: recorded in the manifest to name what changed."""
    return {rel: file_digest(rel) for rel in files(kind, extra)}


def identity(kind: str, extra: Iterable[str] = ()) -> dict[str, str | list[str]]:
    """The code part of the key of a ``kind`` stage (see the module docstring)."""
    extra = sorted(set(extra))
    blob = "\n".join(f"{rel} {digest}" for rel, digest in file_digests(kind, extra).items())
    out: dict[str, str | list[str]] = {"version": f"{kind}/{VERSIONS.get(kind, '0')}", "tms": tms_version(),
                                       "source": hashlib.sha256(blob.encode()).hexdigest()[:16]}
    if extra:
        out["extra"] = extra
    return out


def verifier_digest() -> str:
    """One digest of the verifier-only modules (the harvest records it next to its ``score`` column)."""
    blob = "\n".join(f"{rel} {file_digest(rel)}" for rel in sorted(VERIFIERS) if (PACKAGE / rel).is_file())
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def changes(old: dict | None, new: dict, old_files: dict | None, new_files: dict) -> list[str]:
    """Human-readable differences between two code identities (and their per-file digests)."""
    if not old:
        return ["built before stages recorded their code identity"]
    out = [f"{k} {old.get(k)} -> {new.get(k)}" for k in ("version", "tms") if old.get(k) != new.get(k)]
    if old_files is not None:
        changed = sorted(f for f in set(old_files) & set(new_files) if old_files[f] != new_files[f])
        added, removed = sorted(set(new_files) - set(old_files)), sorted(set(old_files) - set(new_files))
        out += [f"{what}: {', '.join('tms/' + f for f in fs)}"
                for what, fs in (("changed", changed), ("added", added), ("removed", removed)) if fs]
    elif old.get("source") != new.get("source"):
        out.append("source files changed")
    return out or ["identical"]
