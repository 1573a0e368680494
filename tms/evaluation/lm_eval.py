"""lm-evaluation-harness as an evaluation backend: one model on lm-eval tasks, scored under tms's benchmark keys.

:func:`evaluate_lm_eval` runs ``lm_eval.simple_evaluate`` (model type ``hf`` or ``vllm``) on the lm-eval task of
each benchmark and returns the *absolute* numbers of one model in the shape of
:func:`tms.evaluation.suite.evaluate_model`'s (``scores[b]``, ``target``, ``samples[b]``), so
:func:`tms.evaluation.suite.relative_metrics` adds S_xfer, retention and F as for tms's own suite. A benchmark is

* ``{task: <lm-eval task or group>, metric: "<metric>,<filter>"}`` — a task of lm-eval's registry or of
  ``include_path``; its score is ``results[task][metric]`` of lm-eval's output (e.g. ``exact_match,strict-match``);
* ``{export: <Hydra node of a tms Task>}`` — the tms task written as a local lm-eval task first
  (:mod:`tms.evaluation.lm_eval_tasks`, into a temporary directory), scored by the task's own verifier
  (``score,none``): offline, e.g. the toy world's benchmarks.

``lm_eval`` is an optional extra (``pip install 'tms[lm_eval]'``), imported only when a run starts;
:func:`missing_packages` and :func:`unknown_tasks` let the config checks fail before any compute.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import multiprocessing as mp
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tms.core.io import write_json
from tms.evaluation.lm_eval_tasks import SCORE_METRIC, export_tasks
from tms.generation.isolated import without_job_env
from tms.generation.vllm import vllm_dtype

log = logging.getLogger(__name__)

MIN_VERSION = (0, 4, 4)
#: tms's eval backend -> lm-eval's model type
MODEL_TYPES = {"hf": "hf", "vllm": "vllm"}
#: importable modules each model type needs (lm-eval's ``hf`` extra brings accelerate; ``vllm`` needs vLLM)
NEEDS = {"hf": ("lm_eval", "accelerate"), "vllm": ("lm_eval", "vllm")}
INSTALL_HINT = "pip install 'tms[lm_eval]' (lm_eval[hf]>=0.4.4)"
#: the prefix of the lm-eval task names of exported tms tasks
EXPORT_PREFIX = "tms_"


def installed_version() -> str | None:
    """The installed lm-eval version, or None when it is not installed."""
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.4.13"`` -> ``(0, 4, 13)`` (a pre-release suffix is ignored)."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def missing_packages(backend: str) -> list[str]:
    """What lm-eval's model type for ``backend`` needs and is not importable (an old lm-eval counts as missing)."""
    missing = [m for m in NEEDS[backend] if importlib.util.find_spec(m) is None]
    version = installed_version()
    if "lm_eval" not in missing and (version is None or version_tuple(version) < MIN_VERSION):
        missing.insert(0, f"lm_eval>={'.'.join(map(str, MIN_VERSION))} (installed: {version})")
    return missing


def include_paths(value: str | Sequence[str] | None) -> list[str]:
    """``eval.include_path`` as a list of absolute directories (null: none)."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, Path)) else list(value)
    return [str(Path(str(p)).expanduser().resolve()) for p in items]


@functools.lru_cache(maxsize=8)
def task_manager(include: tuple[str, ...], include_defaults: bool = True):
    """lm-eval's ``TaskManager`` over its own tasks (``include_defaults``) and the directories ``include``
    (cached per process: indexing lm-eval's ~15K built-in task configs takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=include_defaults)


def unknown_tasks(names: Sequence[str], include: Sequence[str] = (), include_defaults: bool = True) -> list[str]:
    """The ``names`` lm-eval knows as no task, group or tag (in its registry / the ``include`` directories)."""
    tm = task_manager(tuple(include), bool(include_defaults))
    known = set(tm.all_tasks)
    return [n for n in names if n not in known]


def model_args(backend: str, path: str, model_kwargs: Mapping[str, Any], seed: int,
               extra: Mapping[str, Any] | None = None, device: str | None = None,
               vllm: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """lm-eval's ``model_args`` for the model at ``path``: tms's model settings, then ``extra`` (eval.model_args).

    ``hf``: ``pretrained``, ``dtype``, ``trust_remote_code`` (+ ``revision``, ``attn_implementation`` when set),
    ``device``; ``vllm``: ``pretrained``, the vLLM dtype, ``seed``, ``tensor_parallel_size`` and
    ``gpu_memory_utilization`` (tms's harvest settings, ``vllm``).
    """
    trust = bool(model_kwargs.get("trust_remote_code", False))
    args: dict[str, Any] = {"pretrained": str(path), "trust_remote_code": trust}
    if backend == "vllm":
        v = dict(vllm or {})
        args.update(dtype=vllm_dtype(model_kwargs.get("dtype", "auto")), seed=int(seed),
                    tensor_parallel_size=int(v.get("tensor_parallel_size", 1)),
                    gpu_memory_utilization=float(v.get("gpu_memory_utilization", 0.85)))
    else:
        args["dtype"] = str(model_kwargs.get("dtype") or "auto")
        for key in ("revision", "attn_implementation"):
            if model_kwargs.get(key):
                args[key] = model_kwargs[key]
        args["device"] = device or default_device()
    args.update(dict(extra or {}))
    return args


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def metric_value(raw: Mapping[str, Any], task: str, metric: str, bench: str) -> tuple[float, float | None]:
    """``(value, stderr)`` of ``metric`` (``<name>,<filter>``) of ``task`` in lm-eval's output ``raw``."""
    entry = (raw.get("results") or {}).get(task)
    if entry is None:
        raise KeyError(f"eval.benchmarks.{bench}: lm-eval returned no results for task {task!r} "
                       f"(it returned {sorted(raw.get('results') or {})})")
    if metric not in entry:
        reported = sorted(k for k in entry if "," in k and "_stderr," not in k)
        raise KeyError(f"eval.benchmarks.{bench}.metric: {metric!r} is not among the metrics lm-eval reports for "
                       f"{task!r}: {reported}")
    name, _, filt = metric.partition(",")
    stderr = entry.get(f"{name}_stderr,{filt}")
    return float(entry[metric]), (float(stderr) if isinstance(stderr, (int, float)) else None)


def leaf_tasks(raw: Mapping[str, Any], task: str) -> list[str]:
    """``task`` itself, or for a group the tasks under it (depth first, in lm-eval's order)."""
    children = (raw.get("group_subtasks") or {}).get(task)
    if not children:
        return [task]
    return [leaf for child in children for leaf in leaf_tasks(raw, child)]


def samples_of(raw: Mapping[str, Any], task: str, metric: str, keep: int) -> list[dict[str, Any]]:
    """The first ``keep`` documents of ``task`` (or of its group's tasks) as tms's ``samples`` rows: the prompt
    lm-eval built, the raw completion, the extracted answer (the filter's output) and the document's score."""
    name, _, filt = metric.partition(",")
    rows: list[dict[str, Any]] = []
    for leaf in leaf_tasks(raw, task):
        for s in sorted((raw.get("samples") or {}).get(leaf, []), key=lambda s: s.get("doc_id", 0)):
            if len(rows) >= keep:
                return rows
            if s.get("filter", "none") != filt:
                continue
            args, resps = s.get("arguments") or [[None]], s.get("resps") or [[None]]
            rows.append({"prompt": args[0][0], "completion": resps[0][0], "extracted": (s.get("filtered_resps")
                         or [None])[0], "score": s.get(name)})
    return rows


def simple_evaluate_kwargs(settings: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The arguments of ``lm_eval.simple_evaluate`` that ``settings`` (the stage key's) and the seed give."""
    return {
        "num_fewshot": settings.get("num_fewshot"), "batch_size": settings.get("batch_size"),
        "limit": settings.get("limit"), "gen_kwargs": settings.get("gen_kwargs") or None,
        "apply_chat_template": settings.get("apply_chat_template", True),
        "fewshot_as_multiturn": bool(settings.get("fewshot_as_multiturn", True)),
        "system_instruction": settings.get("system_instruction"),
        "bootstrap_iters": int(settings.get("bootstrap_iters", 100000)), "log_samples": True,
        "random_seed": int(seed), "numpy_random_seed": int(seed), "torch_random_seed": int(seed),
        "fewshot_random_seed": int(seed),
    }


def task_names(benchmarks: Mapping[str, Mapping[str, Any]], exported: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{benchmark: (lm-eval task, metric)}``: the configured task, or the exported task's name and ``score,none``."""
    return {b: (exported[b], SCORE_METRIC) if b in exported else (str(spec["task"]), str(spec["metric"]))
            for b, spec in benchmarks.items()}


def evaluate_lm_eval(model_path: str, benchmarks: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any],
                     model_kwargs: Mapping[str, Any], seed: int, target: str | None = None,
                     keep_samples: int = 3, vllm: Mapping[str, Any] | None = None,
                     raw_out: str | Path | None = None, isolated: bool = False) -> dict[str, Any]:
    """Absolute scores of the model at ``model_path`` on ``benchmarks`` through ``lm_eval.simple_evaluate``.

    ``settings``: ``model`` (hf | vllm), ``model_args`` (extra lm-eval model arguments), ``device``, ``num_fewshot``,
    ``batch_size``, ``limit``, ``gen_kwargs``, ``apply_chat_template``, ``fewshot_as_multiturn``,
    ``system_instruction``, ``bootstrap_iters``, ``include_path``, ``include_defaults``, and for exported tasks
    ``split`` and ``max_new_tokens``. Returns ``{"scores", "target", "samples", "lm_eval"}`` (``lm_eval``: the
    version, model type and arguments, and per benchmark its task, metric, stderr, n-shot and document count).
    ``raw_out``: also write lm-eval's own output there (without its per-document samples). ``isolated``: run it all
    in a child process (:func:`in_child`; what the vllm model type should do: the engine's GPU memory, worker
    processes and CUDA context end with the child, before the next model is evaluated).
    """
    if isolated:
        return in_child(evaluate_lm_eval, model_path, benchmarks, settings, model_kwargs, seed, target, keep_samples,
                        vllm, raw_out, False)
    backend = str(settings.get("model", "hf"))
    with exported_tasks(benchmarks, settings) as (exported, include):
        tasks = task_names(benchmarks, exported)
        args = model_args(backend, model_path, model_kwargs, seed, settings.get("model_args"), settings.get("device"),
                          vllm)
        raw = run_harness(backend, args, tasks, include, settings, seed, fresh_index=bool(exported))
    if raw_out is not None:
        write_json(raw_out, {k: v for k, v in raw.items() if k != "samples"})
    return results_of(raw, tasks, backend, args, target, keep_samples)


@contextlib.contextmanager
def exported_tasks(benchmarks: Mapping[str, Mapping[str, Any]],
                   settings: Mapping[str, Any]) -> Iterator[tuple[dict[str, str], list[str]]]:
    """``({benchmark: lm-eval task}, include directories)``: the ``export`` benchmarks written as lm-eval tasks into
    a temporary directory (removed on exit, with the datasets cache of their JSONL files), after ``include_path``."""
    include = include_paths(settings.get("include_path"))
    exports = {b: spec["export"] for b, spec in benchmarks.items() if spec.get("export") is not None}
    if not exports:
        yield {}, include
        return
    with tempfile.TemporaryDirectory(prefix="tms_lm_eval_") as tmp:
        names = export_tasks(Path(tmp) / "tasks", exports, str(settings.get("split", "test")), settings.get("limit"),
                             int(settings.get("max_new_tokens") or 256), EXPORT_PREFIX,
                             datasets_cache=Path(tmp) / "datasets")
        yield names, include + [str(Path(tmp) / "tasks")]


def run_harness(backend: str, args: Mapping[str, Any], tasks: Mapping[str, tuple[str, str]], include: list[str],
                settings: Mapping[str, Any], seed: int, fresh_index: bool = False) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of the model ``args`` on the lm-eval tasks of ``tasks``; lm-eval's output.
    ``fresh_index``: index ``include`` anew (a temporary export directory: not kept in :func:`task_manager`'s cache)."""
    import lm_eval

    manager = task_manager.__wrapped__ if fresh_index else task_manager
    log.info("lm-eval %s on %s: %s", lm_eval.__version__, args["pretrained"], {b: t for b, (t, _) in tasks.items()})
    return lm_eval.simple_evaluate(model=MODEL_TYPES[backend], model_args=dict(args),
                                   tasks=sorted({t for t, _ in tasks.values()}),
                                   task_manager=manager(tuple(include), bool(settings.get("include_defaults", True))),
                                   **simple_evaluate_kwargs(settings, seed))


def results_of(raw: Mapping[str, Any], tasks: Mapping[str, tuple[str, str]], backend: str, args: Mapping[str, Any],
               target: str | None, keep: int) -> dict[str, Any]:
    """tms's result shape from lm-eval's output ``raw`` (see :func:`evaluate_lm_eval`)."""
    out: dict[str, Any] = {"scores": {}, "samples": {}}
    detail = {}
    for bench, (task, metric) in tasks.items():
        value, stderr = metric_value(raw, task, metric, bench)
        out["scores"][bench] = value
        out["samples"][bench] = samples_of(raw, task, metric, keep)
        n = sum(int(((raw.get("n-samples") or {}).get(leaf) or {}).get("effective", 0)) for leaf in leaf_tasks(raw, task))
        detail[bench] = {"task": task, "metric": metric, "stderr": stderr, "n": n,
                         "num_fewshot": (raw.get("n-shot") or {}).get(task)}
        log.info("lm-eval %s (%s %s) = %.3f", bench, task, metric, value)
    if target is not None:
        out["target"] = out["scores"][target]
    out["lm_eval"] = {"version": installed_version(), "model": MODEL_TYPES[backend],
                      "model_args": {k: v for k, v in args.items() if k != "pretrained"}, "benchmarks": detail}
    return out


def _child(conn, fn, args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def in_child(fn, *args: Any) -> Any:
    """``fn(*args)`` in a ``spawn``-ed child process without the job's rank variables; its return value, or a
    RuntimeError with the child's traceback (``fn`` and its arguments and result must pickle)."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    with without_job_env():
        proc = ctx.Process(target=_child, args=(send, fn, args))  # not a daemon: vLLM starts processes of its own
        proc.start()
    send.close()
    try:
        status, payload = receive.recv()
    except EOFError:
        status, payload = "error", "the child process ended without a result"
    proc.join()
    if status != "ok":
        raise RuntimeError(f"lm-eval in its own process failed (exit code {proc.exitcode}):\n{payload}")
    return payload
