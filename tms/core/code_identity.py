"""The code part of a stage's cache key: which source files each stage kind's outputs depend on.

A stage's hash (:class:`tms.core.cache.Stage`) covers its config key *and* :func:`identity` of its kind::

    {"version": "<kind>/<VERSIONS[kind]>",   # bumped by hand for a semantic change outside the files below
     "tms": "<package version>",
     "source": "<16 hex>"}                  # SHA-256 over (path, SHA-256 of the bytes) of MODULES[kind]

so a fix to a loss, the data code or a verifier rebuilds exactly the stages whose outputs it can change.
Paths are relative to the ``tms`` package and sorted, and the bytes are hashed as they are on disk, so
the identity is the same on every machine that has the same sources (no mtimes, no absolute paths).
File digests are computed once per process (:func:`file_digest`); :func:`clear_cache` forgets them.

How the lists were chosen (read the stage's ``fill`` in :mod:`tms.stages` and what it imports):

* **TRAINING** is the loop every training stage runs (:func:`tms.training.loop.fit`, its callbacks,
  checkpoint IO, the non-finite guard, strategies, the optimiser schedule, model loading, the losses
  and the SFT LightningModule). **DATA** is the data module, target sources, formatting and the task
  modules (prompts, references, splits), *without* the verifier-only code in **VERIFIERS**, but with
  the source of ``data/tasks/verify.last_boxed`` (MATH's gold answer: it decides which examples exist), the one
  piece of ``verify.py`` that shapes data. The toy world's answer extraction lives in
  ``toy/skills.py`` next to its generators, so on the toy an extractor fix rebuilds everything.
* θ0 ``base`` (the toy world) = ``tms/toy/*`` + TRAINING + DATA. Its manifest's skill accuracy is
  computed with the evaluation code, which is deliberately left out: it is a note, not the model.
* Stage 1 ``sft`` = TRAINING + DATA; the ``student`` also ``data/buffer.py`` (its view of H). A student with
  ``data.target_source.correct_only=true`` filters on the harvest's verifier scores, so it adds the
  ``verifiers`` part (see :func:`identity` ``extra``); :func:`tms.generation.harvest.rescore` refreshes stale scores.
* ``harvest`` = ``generation/harvest.py`` + ``data/buffer.py`` + the generation backends (and ``core/seeds.py``) + DATA (the prompts). The
  ``score`` column is the verifier's, but the completions are not, so a verifier fix does not
  regenerate the harvest; the verifier digest is recorded in its manifest instead.
* ``rl`` = the RL modules (``methods/rl*.py``, the stage ``stages/rl.py``), their losses and rewards, the verifiers (the reward *is* the verifier),
  the rollout generator, TRAINING and DATA.
* ``eval`` = ``evaluation/suite.py``, ``metrics.py`` and ``objectives/kl.py`` (what writes ``results.json``), the generation
  backends, DATA and VERIFIERS. Reports, plots, tables and W&B logging post-process results.json
  and are not hashed, nor is ``evaluation/buffer_stats.py`` (``buffer.json``: diagnostics of a harvest
  buffer written straight into a run directory by ``evaluate.py buffer_of=``, not a cached stage; it
  imports ``suite.py``, never the other way round).
* ``gguf`` = the converter and model loading (its config key also holds ``CONVERTER_VERSION``).
* ``lm_eval`` (``eval.harness=lm_eval``) = the lm-evaluation-harness adapter (``evaluation/lm_eval.py``) and the
  exporter of tms tasks as local lm-eval tasks (``evaluation/lm_eval_tasks.py``, whose ``process_results`` grades
  with the task's verifier) + the generation modules it reads vLLM's dtypes and the job's variables from + DATA (the exported prompts; with
  ``objectives/nll.py``, which ``data/formatting.py`` imports) and
  VERIFIERS. lm-eval itself is not hashed: its version is in the stage's config key.

Orchestration is not hashed (:data:`NOT_HASHED`): ``pipeline.py`` and the stages (keys, wiring; the RL stage is,
as before the move, hashed with RL), the cache, ``core/io.py`` (atomic writes), ``core/distributed.py``, ``cli/``,
``config/`` (validation), tracking and redaction. A change there that
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
PACKAGE = Path(__file__).resolve().parents[1]

#: per stage kind: bump by hand when a stage's outputs change for a reason the hashed files do not show
VERSIONS = {"base": "1", "gguf": "1", "sft": "1", "student": "1", "harvest": "1", "rl": "1", "eval": "1", "lm_eval": "1"}

VERIFIERS = ("data/tasks/verify.py", "data/tasks/ifeval_checks.py", "data/tasks/ifeval_reference.py",
             "data/tasks/safety_judge.py")
TRAINING = ("training/loop.py", "training/callbacks.py", "training/optim.py", "training/resume.py",
            "training/numerics.py", "models/loading.py", "models/lora.py", "models/strategies.py", "models/varlen.py",
            "objectives/nll.py",
            "objectives/head_logprobs.py", "objectives/policy_gradient.py", "objectives/kl.py", "methods/base.py",
            "methods/sft.py")
#: ``file:name,name`` hashes only those top-level definitions: MATH's gold answer (which decides which training
#: examples exist) is ``data/tasks/verify.last_boxed``; the rest of verify.py only grades
DATA = ("data/__init__.py", "data/datamodule.py", "data/formatting.py", "data/packing.py", "data/position.py",
        "data/sources.py",
        "data/windows.py", "data/tasks/*.py", "toy/tasks.py", "toy/skills.py", "data/tasks/verify.py:last_boxed,_BOXED")
#: the trajectory buffer H[t, x] (its storage and the student's view of it)
BUFFER = ("data/buffer.py",)
GENERATION = ("generation/base.py", "generation/decode.py", "generation/factory.py", "generation/hf.py",
              "generation/scoring.py",
              "generation/vllm.py", "generation/isolated.py", "core/seeds.py", "models/loading.py", "models/sharding.py",
              "data/formatting.py", "objectives/nll.py", "objectives/head_logprobs.py", "objectives/policy_gradient.py",
              "objectives/kl.py")
RL = ("methods/rl.py", "methods/rl_config.py", "stages/rl.py", "objectives/policy_gradient.py", "objectives/kl.py",
      "methods/rewards.py")

#: the source files (globs relative to PACKAGE) each stage kind's outputs depend on; VERIFIERS only where listed
MODULES: dict[str, tuple[str, ...]] = {
    "base": ("toy/*.py",) + TRAINING + DATA,
    "sft": TRAINING + DATA,
    "student": BUFFER + TRAINING + DATA,
    "harvest": ("generation/harvest.py",) + BUFFER + GENERATION + DATA,
    "rl": RL + TRAINING + DATA + GENERATION + VERIFIERS,
    "eval": ("evaluation/__init__.py", "evaluation/suite.py", "evaluation/metrics.py", "objectives/kl.py") + GENERATION
            + DATA + VERIFIERS,
    "gguf": ("models/gguf.py", "models/loading.py", "data/formatting.py", "data/packing.py", "objectives/nll.py"),
    "lm_eval": ("evaluation/__init__.py", "evaluation/lm_eval.py", "evaluation/lm_eval_tasks.py", "generation/vllm.py",
                "generation/base.py", "generation/isolated.py", "core/seeds.py", "objectives/nll.py") + DATA
               + VERIFIERS,
}
#: imported by hashed files but not hashed on purpose: orchestration, IO wrappers, config checks (see above)
NOT_HASHED = ("core/io.py", "core/errors.py", "core/redact.py", "core/tracking.py", "core/checks.py", "core/keys.py",
              "core/distributed.py",
              "core/code_identity.py", "core/cache/*.py", "config/*.py", "cli/*.py", "pipeline.py", "stages/common.py",
              "stages/base_model.py", "stages/sft.py", "stages/harvest.py", "stages/student.py", "stages/evaluation.py")
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
            raise KeyError(f"tms.core.code_identity: {path} defines no top-level {missing}; update code_identity.DATA")
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
