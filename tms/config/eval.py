"""The evaluation suite's config (``eval``): its benchmark roles and the checks run before any compute."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from tms.config.generation import check_sampling
from tms.config.hardware import resolve_backend
from tms.core.checks import build, integer, require
from tms.core.errors import ConfigError
from tms.data.tasks.base import SPLITS
from tms.generation.factory import BACKENDS, check_backend
from tms.generation.vllm import vllm_dtype
from tms.objectives.kl import ESTIMATORS


def suite_names(cfg: DictConfig) -> dict[str, Any]:
    """The benchmark roles of the suite: ``target``, ``other_targets`` (minus the target), ``retention``."""
    target = str(cfg.eval.target)
    others = [str(b) for b in (cfg.eval.get("other_targets") or []) if str(b) != target]
    return {"name": cfg.eval.get("name"), "target": target, "other_targets": others,
            "retention": [str(b) for b in (cfg.eval.get("retention") or [])]}


def eval_backend(cfg: DictConfig) -> str:
    """``eval.backend`` (hf | vllm), or the harvest's backend when null (``harvest.backend``, ``auto`` resolved):
    the engine of the greedy scores and the Pass@k samples (the KL and PLD scores stay on HF)."""
    backend = cfg.eval.get("backend")
    if backend is None:
        resolve_backend(cfg)
        backend = (cfg.get("harvest") or {}).get("backend", "hf")
    return str(backend)


def check_suite(cfg: DictConfig) -> None:
    """The suite before any compute (:func:`tms.config.validate.validate` and :func:`evaluate` call it).

    Every benchmark it names (target, other targets, retention) is in ``eval.benchmarks`` and builds
    (constructors check their arguments; no data is loaded); the generation, sampling (``eval.sampling``:
    Pass@k, SC-Acc) and KL settings are in range.
    """
    names = suite_names(cfg)
    e = cfg.eval
    known = set(e.benchmarks)
    for key, listed in (("eval.target", [names["target"]]), ("eval.other_targets", names["other_targets"]),
                        ("eval.retention", names["retention"])):
        missing = [b for b in listed if b not in known]
        if missing:
            raise ConfigError(f"{key}: {missing} not in eval.benchmarks ({sorted(known)}); the target is the training "
                              "task's benchmark, so data= and eval= must agree")
    integer("eval.max_new_tokens", e.get("max_new_tokens"))
    integer("eval.batch_size", e.get("batch_size", 64))
    integer("eval.limit", e.get("limit"), optional=True)
    integer("eval.pld_limit", e.get("pld_limit"), optional=True)
    require(e.get("split", "test") in SPLITS, "eval.split", f"must be one of {SPLITS}, got {e.get('split')!r}")
    backend = eval_backend(cfg)
    require(backend in BACKENDS, "eval.backend", f"must be null (the harvest's backend) or one of {BACKENDS}, "
            f"got {backend!r}")
    if backend == "vllm":
        try:
            vllm_dtype(cfg.model.get("dtype", "auto"))
        except ValueError as err:
            where = "eval.backend" if e.get("backend") is not None else "harvest.backend (eval.backend: null follows it)"
            raise ConfigError(f"{where}: {err}") from err
    s = e.sampling
    check_sampling(s, "eval.sampling", "n", backend=backend, max_new_tokens=False, backend_key="eval.backend")
    if backend == "vllm":
        check_backend("vllm")  # installed, and a GPU visible
    ks = s.get("ks")
    ok = ks is not None and len(ks) > 0 and all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= s.n
                                                for k in ks)
    require(ok, "eval.sampling.ks", f"must be a non-empty list of integers k in [1, eval.sampling.n={s.n}] (Pass@k "
            f"needs n >= k samples), got {ks!r}; lower them or raise eval.sampling.n")
    integer("eval.sampling.limit", s.get("limit"), optional=True)
    kl = e.kl
    integer("eval.kl.limit", kl.get("limit"), optional=True)
    integer("eval.kl.n", kl.get("n", 1))
    estimator = kl.get("estimator", "k1")
    require(estimator in ESTIMATORS, "eval.kl.estimator", f"must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    for name, node in e.benchmarks.items():
        build(node, f"eval.benchmarks.{name}")
