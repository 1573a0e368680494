"""The evaluation suite's config (``eval``): its benchmark roles and the checks run before any compute.

``eval.harness`` picks who evaluates: ``tms`` (the default: :mod:`tms.evaluation.suite`, benchmarks are Hydra nodes
of tms tasks) or ``lm_eval`` (lm-evaluation-harness, :mod:`tms.evaluation.lm_eval`: benchmarks map a tms benchmark
key to an lm-eval task and metric, or export a tms task as a local lm-eval task; ``conf/eval/lm_eval.yaml``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig

from tms.config.generation import check_sampling, check_vllm_dtype
from tms.config.hardware import resolve_backend
from tms.core.checks import build, integer, known_keys, require
from tms.core.errors import ConfigError
from tms.data.tasks.base import SPLITS, Task
from tms.evaluation.lm_eval import INSTALL_HINT, include_paths, installed_version, missing_packages, unknown_tasks
from tms.evaluation.lm_eval_tasks import SCORE_METRIC
from tms.generation.factory import BACKENDS, check_backend
from tms.objectives.kl import ESTIMATORS


HARNESSES = ("tms", "lm_eval")


def harness(cfg: DictConfig) -> str:
    """``eval.harness``: ``tms`` (default) or ``lm_eval``."""
    return str(cfg.eval.get("harness") or "tms")


def suite_names(cfg: DictConfig) -> dict[str, Any]:
    """The benchmark roles of the suite: ``target``, ``other_targets`` (minus the target), ``retention``.

    With ``eval.tasks`` (lm_eval: the benchmarks to run) the other targets and retention benchmarks are those
    among them."""
    target = str(cfg.eval.target)
    others = [str(b) for b in (cfg.eval.get("other_targets") or []) if str(b) != target]
    retention = [str(b) for b in (cfg.eval.get("retention") or [])]
    chosen = cfg.eval.get("tasks")
    if chosen is not None:
        keep = {str(b) for b in chosen}
        others, retention = [b for b in others if b in keep], [b for b in retention if b in keep]
    return {"name": cfg.eval.get("name"), "target": target, "other_targets": others, "retention": retention}


def evaluated(cfg: DictConfig) -> list[str]:
    """The benchmarks a run scores: ``eval.tasks`` if given, else the target, other targets and retention ones."""
    if cfg.eval.get("tasks") is not None:
        return list(dict.fromkeys(str(b) for b in cfg.eval.tasks))
    names = suite_names(cfg)
    return list(dict.fromkeys([names["target"], *names["other_targets"], *names["retention"]]))


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
    kind = harness(cfg)
    require(kind in HARNESSES, "eval.harness", f"must be one of {HARNESSES}, got {kind!r}")
    if kind == "lm_eval":
        check_lm_eval(cfg)
        return
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
        check_vllm_dtype(cfg, "eval.backend" if e.get("backend") is not None
                         else "harvest.backend (eval.backend: null follows it)")
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


# -- lm-evaluation-harness (eval.harness=lm_eval) -------------------------------------------------------------------
def check_lm_eval(cfg: DictConfig) -> None:
    """The ``eval.harness=lm_eval`` suite before any compute (:func:`check_suite` calls it).

    The roles and ``eval.tasks`` name benchmark keys of ``eval.benchmarks`` (the target among the evaluated ones);
    each evaluated benchmark is an lm-eval ``task`` with its ``metric`` or an ``export`` of a tms task that builds;
    the settings have their types; lm-eval (and the model type's packages) is installed; every ``task`` is one lm-eval
    knows (its registry and ``eval.include_path``).
    """
    check_lm_eval_roles(cfg)
    for name in evaluated(cfg):
        check_lm_eval_benchmark(cfg.eval.benchmarks[name], f"eval.benchmarks.{name}")
    check_lm_eval_settings(cfg.eval)
    check_lm_eval_install(cfg)
    check_lm_eval_tasks(cfg)


def check_lm_eval_roles(cfg: DictConfig) -> None:
    """``eval.tasks`` and the roles (target, other targets, retention) are keys of ``eval.benchmarks``, and the
    target is evaluated."""
    e = cfg.eval
    known = set(e.get("benchmarks") or {})
    hint = "add it as eval.benchmarks.<key>={task: <lm-eval task>, metric: '<metric>,<filter>'}"
    chosen = e.get("tasks")
    if chosen is not None:
        require(isinstance(chosen, (list, ListConfig)) and len(chosen) > 0, "eval.tasks",
                f"must be null (the target, other targets and retention benchmarks) or a non-empty list of benchmark "
                f"keys, got {chosen!r}")
        unknown = [str(b) for b in chosen if str(b) not in known]
        require(not unknown, "eval.tasks", f"unknown benchmark key(s) {unknown}: the keys of eval.benchmarks are "
                f"{sorted(known)}; {hint}")
    target = str(e.target)
    for key, listed in (("eval.target", [target]), ("eval.other_targets", [str(b) for b in e.get("other_targets") or []]),
                        ("eval.retention", [str(b) for b in e.get("retention") or []])):
        missing = [b for b in listed if b not in known]
        require(not missing, key, f"{missing} not in eval.benchmarks ({sorted(known)}); {hint}, or set {key}")
    require(target in evaluated(cfg), "eval.target", f"{target!r} is not among eval.tasks {list(evaluated(cfg))}: "
            "S_tgt needs the target's score")


def check_lm_eval_install(cfg: DictConfig) -> None:
    """The backend is lm-eval's hf or vllm model, and what it needs is installed (vLLM: with a usable dtype and GPU)."""
    backend = eval_backend(cfg)
    require(backend in BACKENDS, "eval.backend", f"must be null (the harvest's backend) or one of {BACKENDS} (lm-eval's "
            f"hf or vllm model), got {backend!r}")
    missing = missing_packages(backend)
    require("vllm" not in missing, "eval.backend", "lm-eval's vllm model needs vLLM, not installed: pip install "
            "'tms[vllm]' (or eval.backend=hf)")
    require(not missing, "eval.harness", f"lm_eval needs {missing}, not installed: {INSTALL_HINT}")
    if backend == "vllm":
        check_vllm_dtype(cfg, "eval.backend")
        check_backend("vllm")


def check_lm_eval_benchmark(node: Any, key: str) -> None:
    """One lm_eval benchmark: ``{task, metric}`` (an lm-eval task, ``<metric>,<filter>``) or ``{export}`` (a tms task)."""
    require(isinstance(node, (Mapping, DictConfig)), key, f"must be a mapping {{task, metric}} or {{export}}, got {node!r}")
    known_keys(node, key, ("task", "metric", "export"))
    has_task, has_export = node.get("task") is not None, node.get("export") is not None
    require(has_task != has_export, key, "needs exactly one of task (an lm-eval task, group or tag, with its metric) or "
            "export (the Hydra node of a tms task, written as a local lm-eval task)")
    metric = node.get("metric")
    if has_export:
        require(metric in (None, SCORE_METRIC), f"{key}.metric", f"an exported task reports {SCORE_METRIC!r} (the tms "
                f"verifier's score); drop the key, got {metric!r}")
        task = build(node.export, f"{key}.export")
        require(isinstance(task, Task), f"{key}.export", f"must build a tms Task, got {type(task).__name__}")
        return
    require(isinstance(node.task, str) and bool(node.task), f"{key}.task", f"must be an lm-eval task name, got "
            f"{node.task!r}")
    require(metric is not None, f"{key}.metric", f"missing: name the lm-eval metric of {node.task!r} as "
            "'<metric>,<filter>' (e.g. 'exact_match,strict-match', 'acc_norm,none')")
    require(isinstance(metric, str) and metric.count(",") == 1 and all(metric.split(",")), f"{key}.metric",
            f"must be '<metric>,<filter>' as lm-eval reports it (e.g. 'acc_norm,none'), got {metric!r}")


def check_lm_eval_settings(e: DictConfig) -> None:
    """The types and ranges of the lm_eval settings of ``eval``."""
    size = e.get("batch_size", 64)
    require(size == "auto" or (isinstance(size, int) and not isinstance(size, bool) and size >= 1), "eval.batch_size",
            f"must be an integer >= 1 or 'auto', got {size!r}")
    integer("eval.limit", e.get("limit"), optional=True)
    integer("eval.num_fewshot", e.get("num_fewshot"), minimum=0, optional=True)
    integer("eval.bootstrap_iters", e.get("bootstrap_iters", 100000), minimum=0)
    integer("eval.max_new_tokens", e.get("max_new_tokens"), optional=True)
    require(e.get("split", "test") in SPLITS, "eval.split", f"must be one of {SPLITS}, got {e.get('split')!r}")
    for key in ("fewshot_as_multiturn", "include_defaults"):
        require(isinstance(e.get(key, True), bool), f"eval.{key}", f"must be true or false, got {e.get(key)!r}")
    require(e.get("isolated") is None or isinstance(e.get("isolated"), bool), "eval.isolated",
            f"must be null (a child process for vllm), true or false, got {e.get('isolated')!r}")
    chat = e.get("apply_chat_template", True)
    require(isinstance(chat, (bool, str)), "eval.apply_chat_template", f"must be true, false or a template name, got "
            f"{chat!r}")
    for key in ("system_instruction", "device"):
        require(e.get(key) is None or isinstance(e.get(key), str), f"eval.{key}", f"must be null or a string, got "
                f"{e.get(key)!r}")
    for key in ("gen_kwargs", "model_args"):
        require(e.get(key) is None or isinstance(e.get(key), (Mapping, DictConfig)), f"eval.{key}",
                f"must be null or a mapping, got {e.get(key)!r}")
    for path in include_paths(e.get("include_path")):
        require(Path(path).is_dir(), "eval.include_path", f"{path} is not a directory (of lm-eval task YAMLs)")


def check_lm_eval_tasks(cfg: DictConfig) -> None:
    """Every lm-eval ``task`` an evaluated benchmark names is one lm-eval knows (registry + ``eval.include_path``)."""
    e = cfg.eval
    wanted = {name: str(e.benchmarks[name].task) for name in evaluated(cfg) if e.benchmarks[name].get("task")}
    if not wanted:
        return
    include = include_paths(e.get("include_path"))
    defaults = bool(e.get("include_defaults", True))
    unknown = set(unknown_tasks(sorted(set(wanted.values())), include, defaults))
    for name, task in wanted.items():
        where = (["lm-eval's registry"] if defaults else []) + [f"eval.include_path {include}"] * bool(include)
        require(task not in unknown, f"eval.benchmarks.{name}.task", f"{task!r} is no task, group or tag of lm-eval "
                f"{installed_version()} ({' or '.join(where) or 'nothing: include_defaults is false and no include_path'})")
