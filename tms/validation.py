"""Validate the composed config and its inputs before any compute.

Every error is a :class:`ConfigError` that names the config key (or the file) and says how to fix it.
``validate(cfg)`` is called by the pipeline before the first stage (before θ0 is built or loaded), so
an invalid run fails in seconds and writes nothing. It checks

* every key a stage reads, with its type and range: ``model`` (dtype, attention), ``data``, ``sft``
  (and the toy world's ``model.build.pretrain``) with the optimiser's and the scheduler's arguments
  (both are built once on a dummy parameter), ``trainer`` (keys tms sets itself or cannot work with,
  keys ``L.Trainer`` does not take, accelerator, devices, precision, strategy), ``logger``, ``harvest``
  (with the vLLM backend's sampling limits), the ``rl`` block (:func:`tms.methods.rl_config.validate_rl`)
  and the evaluation suite (:func:`tms.evaluation.run.check_suite`);
* the inputs (:mod:`tms.input_checks`): the model's source and the cache directory, batch sizes and step
  counts against the training set, prompt lengths against ``data.max_length`` and the model's context,
  credentials.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tms.errors import ConfigError  # noqa: F401  (re-exported: tms.validation.ConfigError)

log = logging.getLogger(__name__)

KINDS = ("sft", "student", "rl")
#: keys of ``sft`` (and of the toy world's ``model.build.pretrain``, which trains with the same loop)
TRAIN_KEYS = ("num_checkpoints", "epochs", "max_steps", "batch_size", "effective_batch_size", "accumulate_grad_batches",
              "gradient_clip_val", "optimizer", "scheduler", "grid", "keep_resume_checkpoint")


def require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def build(node: DictConfig, key: str):
    """``instantiate(node)``, turning a constructor's or an import's error into a ConfigError naming ``key``."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ or err
        msg = str(cause)
        raise ConfigError(msg if key in msg else f"{key}: {msg}") from err


def integer(key: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """``value`` is an integer >= ``minimum`` (or null, when ``optional``)."""
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, key, f"must be {'null or ' if optional else ''}an integer >= {minimum}, got {value!r}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(key: str, value: Any, low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False, optional: bool = False) -> None:
    """``value`` is a finite number in the interval from ``low`` to ``high`` (open or closed ends)."""
    if optional and value is None:
        return
    ok = is_number(value) and (low is None or (value > low if open_low else value >= low)) and (
        high is None or (value < high if open_high else value <= high))
    if high is None:
        where = f"{'>' if open_low else '>='} {low}" if low is not None else ""
    else:
        where = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    require(ok, key, f"must be {'null or ' if optional else ''}a finite number {where}, got {value!r}")


def known_keys(node: DictConfig, prefix: str, known: Sequence[str]) -> None:
    """Refuse keys of ``node`` nothing reads (a typo would otherwise be ignored silently)."""
    unknown = [k for k in node if k not in known]
    require(not unknown, f"{prefix}.{unknown[0]}" if unknown else prefix,
            f"unknown key (nothing reads it); the keys of {prefix} are {sorted(known)}. Fix its spelling or remove it")


def locate(key: str, path: str):
    """The object a ``_target_`` names, or a ConfigError naming ``key``."""
    from hydra._internal.utils import _locate

    try:
        return _locate(str(path))
    except Exception as err:
        raise ConfigError(f"{key}: cannot import {path!r} ({err})") from err


def check_target(node: DictConfig | None, key: str) -> None:
    """A Hydra node whose ``_target_`` imports and takes the node's arguments, checked without building it (a logger
    would start a run, a reward may load a judge model); nested nodes are not checked."""
    import inspect

    require(node is not None and "_target_" in node, key, "must be a Hydra node with a _target_")
    target = locate(f"{key}._target_", node._target_)
    kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
    try:
        inspect.signature(target).bind_partial(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{key}: {node._target_} does not take these arguments ({err}); fix or remove them") from err
    except ValueError:  # no signature to inspect: building it checks the arguments
        pass


def optimizer_steps(n_examples: int, batch_size: int, world: int, accumulate: int, epochs: int, max_steps: int) -> int:
    """Optimiser steps of a run: ⌈⌈n / world⌉ / batch⌉ micro-batches per epoch, ⌈· / accumulate⌉ steps per epoch."""
    per_epoch = math.ceil(math.ceil(math.ceil(n_examples / world) / batch_size) / accumulate)
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps and max_steps > 0 else total


# -- optimisation ---------------------------------------------------------------------------------------------------
def check_train_block(node: DictConfig, prefix: str) -> None:
    """The keys one training loop (:func:`tms.training.fit`) reads: ``sft`` or ``model.build.pretrain``."""
    known_keys(node, prefix, TRAIN_KEYS)
    integer(f"{prefix}.epochs", node.get("epochs"))
    integer(f"{prefix}.batch_size", node.get("batch_size"))
    max_steps = node.get("max_steps")
    require(max_steps is None or (isinstance(max_steps, int) and not isinstance(max_steps, bool)
                                  and (max_steps == -1 or max_steps >= 1)), f"{prefix}.max_steps",
            f"must be -1 (derived from {prefix}.epochs) or an integer >= 1, got {max_steps!r}")
    integer(f"{prefix}.effective_batch_size", node.get("effective_batch_size"), optional=True)
    integer(f"{prefix}.accumulate_grad_batches", node.get("accumulate_grad_batches"), optional=True)
    number(f"{prefix}.gradient_clip_val", node.get("gradient_clip_val"), 0, optional=True)


def check_optimizer(node: DictConfig | None, key: str, lr: float | None = None, lr_key: str | None = None):
    """The optimiser's arguments, then the optimiser itself built on a dummy parameter (its own checks).

    ``lr``: the learning rate the stage passes instead of ``<key>.lr`` (RL: ``rl.lr`` or ``rl.lr_scale`` × it),
    reported as ``lr_key``. Returns the dummy optimiser (for :func:`check_scheduler`).
    """
    import torch

    require(node is not None and "_target_" in node, key,
            "must be a Hydra node with a _target_ (e.g. torch.optim.AdamW)")
    require(node.get("_partial_") is True, f"{key}._partial_",
            "must be true: the optimiser is built later, from the model's parameters")
    if lr is not None or "lr" in node:
        number(lr_key or f"{key}.lr", node.get("lr") if lr is None else lr, 0, open_low=True)
    if node.get("betas") is not None:
        betas = node.betas
        ok = OmegaConf.is_list(betas) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)
        require(ok, f"{key}.betas", f"must be two finite numbers in [0, 1), got {betas!r}")
    for arg, low, open_low in (("eps", 0, True), ("weight_decay", 0, False), ("momentum", 0, False)):
        if arg in node:
            number(f"{key}.{arg}", node[arg], low, open_low=open_low)
    factory = build(node, key)
    try:
        return factory([torch.nn.Parameter(torch.zeros(1))], **({"lr": lr} if lr is not None else {}))
    except (TypeError, ValueError) as err:  # an argument the optimiser does not take, or refuses
        raise ConfigError(f"{key}: {err} (building {node._target_} on a dummy parameter); fix or remove the "
                          "argument") from err


def check_scheduler(node: DictConfig | None, key: str, optimizer, total_steps: int) -> None:
    """The scheduler's arguments, then the scheduler built on ``optimizer`` for ``total_steps`` (null: no scheduler)."""
    if node is None:
        return
    require("_target_" in node, key, "must be null or a Hydra node with a _target_ (e.g. tms.optim.cosine_with_warmup)")
    require(node.get("_partial_") is True, f"{key}._partial_",
            "must be true: the scheduler is built later, from the optimiser and the number of steps")
    if "warmup_ratio" in node:
        number(f"{key}.warmup_ratio", node.warmup_ratio, 0, 1, open_high=True)
    if "min_lr_ratio" in node:
        number(f"{key}.min_lr_ratio", node.min_lr_ratio, 0, 1)
    if node.get("warmup_steps") is not None:
        integer(f"{key}.warmup_steps", node.warmup_steps, minimum=0)
    factory = build(node, key)
    try:
        factory(optimizer, total_steps=max(1, int(total_steps)))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {err} (building {node._target_} for {total_steps} steps); fix or remove the "
                          "argument") from err


# -- trainer, sampling --------------------------------------------------------------------------------------------
#: ``L.Trainer`` arguments tms does not set but cannot work with (other than at their defaults): they change the
#: number of optimiser steps the T trajectory checkpoints and the scheduler are planned on, or switch off what
#: every stage needs. ``(accepts(value), what to do instead)``.
INCOMPATIBLE_TRAINER_KEYS = {
    "enable_checkpointing": (lambda v: v is True, "tms saves Lightning's resumable last.ckpt itself "
                                                  "(every trainer.checkpoint_every_n_steps); remove it"),
    "barebones": (lambda v: v is False, "tms needs its callbacks, logger and checkpoints; remove it"),
    "fast_dev_run": (lambda v: v in (False, 0), "it changes the optimiser steps the T checkpoints are planned on; "
                                               "use experiment=smoke or sft.max_steps"),
    "limit_train_batches": (lambda v: v is None or (isinstance(v, float) and v == 1.0),
                            "it changes the optimiser steps the T checkpoints are planned on; use data.train_limit"),
    "overfit_batches": (lambda v: v in (0, 0.0), "it changes the optimiser steps the T checkpoints are planned on; "
                                                 "use data.train_limit"),
    "max_time": (lambda v: v is None, "stopping on time leaves trajectory checkpoints unsaved; use sft.max_steps"),
    "min_epochs": (lambda v: v is None, "the run length is set by sft.epochs / sft.max_steps; remove it"),
    "min_steps": (lambda v: v is None, "the run length is set by sft.epochs / sft.max_steps; remove it"),
}


def check_trainer(trainer: DictConfig) -> None:
    """Keys tms sets itself (:data:`tms.training.RESERVED_TRAINER_KEYS`) or cannot work with
    (:data:`INCOMPATIBLE_TRAINER_KEYS`), keys ``L.Trainer`` does not take, and the values Lightning would only
    refuse when the trainer is built (after θ0 and earlier stages)."""
    import inspect
    import typing

    import lightning as L

    from tms.training import RESERVED_TRAINER_KEYS, TMS_TRAINER_KEYS

    for key in trainer:
        require(key not in RESERVED_TRAINER_KEYS, f"trainer.{key}", RESERVED_TRAINER_KEYS.get(key, ""))
    for key, (accepts, instead) in INCOMPATIBLE_TRAINER_KEYS.items():
        if key in trainer:
            require(accepts(trainer[key]), f"trainer.{key}", f"{trainer[key]!r} is not supported: {instead}")
    takes = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    unknown = [k for k in trainer if k not in takes and k not in TMS_TRAINER_KEYS]
    require(not unknown, f"trainer.{unknown[0]}" if unknown else "trainer",
            "is not an argument of lightning.Trainer (nor a tms trainer key: "
            f"{', '.join(TMS_TRAINER_KEYS)}); fix its spelling or remove it")
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    accelerators = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
    acc = trainer.get("accelerator", "auto")
    require(acc in accelerators, "trainer.accelerator", f"must be one of {accelerators}, got {acc!r}")
    if acc in ("gpu", "cuda"):
        import torch

        require(torch.cuda.is_available(), "trainer.accelerator",
                f"{acc!r} but no CUDA device is visible; use trainer=cpu (or run on a GPU machine)")
    devices = trainer.get("devices", "auto")
    ok = (devices in ("auto", -1, "-1") or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
          or (OmegaConf.is_list(devices) and len(devices) > 0 and all(isinstance(d, int) and d >= 0 for d in devices))
          or (isinstance(devices, str) and devices.replace(",", "").strip().isdigit()))
    require(ok, "trainer.devices", f"must be 'auto', -1, an integer >= 1 or a list of device indices, got {devices!r}")
    integer("trainer.num_nodes", trainer.get("num_nodes", 1))
    try:
        from lightning.fabric.connector import _PRECISION_INPUT

        precisions = [p for lit in typing.get_args(_PRECISION_INPUT) for p in typing.get_args(lit)]
    except ImportError:  # another Lightning version: the Trainer checks it
        precisions = None
    if precisions and trainer.get("precision") is not None:
        require(trainer.precision in precisions, "trainer.precision",
                f"must be one of {precisions}, got {trainer.precision!r}")
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, str):
        names = sorted({"auto", *StrategyRegistry.available_strategies()})
        require(strategy in names, "trainer.strategy",
                f"{strategy!r} is not one of {names} (or a node with a _target_)")
    elif strategy is not None:
        require(OmegaConf.is_dict(strategy) and "_target_" in strategy, "trainer.strategy",
                f"must be a strategy name or a node with a _target_, got {strategy!r}")
        locate("trainer.strategy._target_", strategy._target_)
    integer("trainer.checkpoint_every_n_steps", trainer.get("checkpoint_every_n_steps", 50))
    integer("trainer.log_every_n_steps", trainer.get("log_every_n_steps", 50), minimum=0)


def check_sampling(node: DictConfig, prefix: str, n_key: str, backend: str = "hf", max_new_tokens: bool = True) -> None:
    """``temperature`` >= 0, ``top_p`` in (0, 1], ``max_new_tokens`` and the samples per prompt ``n_key`` >= 1;
    the vLLM backend's own limits (temperature <= 2, one sample per prompt when greedy)."""
    if max_new_tokens:
        integer(f"{prefix}.max_new_tokens", node.get("max_new_tokens"))
    t, n = node.get("temperature", 1.0), node.get(n_key, 1)
    number(f"{prefix}.temperature", t, 0)
    number(f"{prefix}.top_p", node.get("top_p", 1.0), 0, 1, open_low=True)
    integer(f"{prefix}.{n_key}", n)
    if backend == "vllm":
        require(t <= 2, f"{prefix}.temperature", f"{t} is above vLLM's limit of 2 (the vllm backend refuses it at run "
                f"time); lower it or use {prefix}.backend=hf")
        require(t > 0 or n == 1, f"{prefix}.temperature", f"0 (greedy) with {prefix}.{n_key}={n}: vLLM refuses greedy "
                f"sampling with more than one sample per prompt; set {prefix}.{n_key}=1 or a temperature > 0")
    elif t == 0 and n > 1:
        log.warning("%s.temperature=0 (greedy) with %s.%s=%d: the %d samples of every prompt will be identical",
                    prefix, prefix, n_key, n, n)


def check_harvest(cfg: DictConfig, T: int) -> None:
    """The ``harvest`` block when the run (or ``python harvest.py``) generates from the train prompts."""
    from tms.generation.factory import BACKENDS, check_backend

    h = cfg.harvest
    require(h.get("backend") in BACKENDS, "harvest.backend", f"must be one of {BACKENDS}, got {h.get('backend')!r}")
    check_sampling(h, "harvest", "samples_per_prompt", backend=h.backend)
    integer("harvest.shard_size", h.get("shard_size"))
    integer("harvest.batch_size", h.get("batch_size"))
    integer("harvest.prompt_subset", h.get("prompt_subset"), optional=True)
    if h.backend == "vllm":
        integer("harvest.tensor_parallel_size", h.get("tensor_parallel_size", 1))
        number("harvest.gpu_memory_utilization", h.get("gpu_memory_utilization", 0.85), 0, 1, open_low=True)
    ts = h.get("checkpoints")
    if ts is not None:
        ok = OmegaConf.is_list(ts) and len(ts) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in ts)
        require(ok, "harvest.checkpoints", f"must be null or a non-empty list of checkpoint indices t, got {ts!r}")
        bad = [t for t in ts if not 0 <= t <= T]
        require(not bad, "harvest.checkpoints", f"{bad} outside 0..T={T} (0 = θ0, T = sft.num_checkpoints)")
    check_backend(h.backend)  # vLLM: installed, and a GPU visible


# -- the entry point ------------------------------------------------------------------------------------------------
def validate(cfg: DictConfig) -> None:
    """Check types, ranges, files and cross-field constraints of a pipeline config and its inputs."""
    from tms.evaluation.run import check_suite
    from tms.input_checks import (check_batch_sizes, check_cache_dir, check_lengths, check_model, check_no_secrets,
                                  check_toy_held_out)
    from tms.training import accumulation, world_size

    kind = cfg.method.get("kind")
    require(kind in KINDS, "method.kind", f"must be one of {KINDS}, got {kind!r}")
    integer("seed", cfg.seed, minimum=0)
    check_no_secrets(cfg)
    check_cache_dir(cfg)
    check_model(cfg)
    check_toy_held_out(cfg)
    check_trainer(cfg.trainer)
    if cfg.get("logger"):
        check_target(cfg.logger, "logger")
    integer("data.max_length", cfg.data.max_length, minimum=2)
    integer("data.max_new_tokens", cfg.data.max_new_tokens)
    integer("data.train_limit", cfg.data.get("train_limit"), optional=True)
    integer("data.val_limit", cfg.data.get("val_limit"), minimum=0, optional=True)
    T = cfg.sft.num_checkpoints
    integer("sft.num_checkpoints", T)
    check_train_block(cfg.sft, "sft")
    optimizer = check_optimizer(cfg.sft.optimizer, "sft.optimizer")
    toy = not cfg.model.get("name_or_path") and cfg.model.get("gguf") is None
    pre = cfg.model.build.get("pretrain") if toy else None
    if pre is not None:  # the toy θ0 trains with these
        check_train_block(pre, "model.build.pretrain")
        check_scheduler(pre.get("scheduler"), "model.build.pretrain.scheduler",
                        check_optimizer(pre.get("optimizer"), "model.build.pretrain.optimizer"), 100)
    if kind == "student":
        integer("student.num_checkpoints", cfg.student.num_checkpoints)
    if cfg.get("eval") is not None:
        check_suite(cfg)
    ts: list[int] = []
    if kind == "student":
        source = build(cfg.data.target_source, "data.target_source")
        try:
            ts = source.required_checkpoints(int(T))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    harvests = bool(ts) or cfg.harvest.get("checkpoints") is not None  # a student's targets, or python harvest.py
    if harvests:
        check_harvest(cfg, int(T))

    task = build(cfg.data.task, "data.task")
    try:
        train = task.examples("train", cfg.data.get("train_limit"))
    except ValueError as err:  # a data file that is empty, unreadable or has missing or mistyped fields
        raise ConfigError(f"data.task: {err}") from err
    require(len(train) > 0, "data.task", f"the train split of {task.name!r} is empty")
    world = world_size(cfg.trainer)
    if kind == "rl":  # the rl block, its budget against the prompts, and the optimiser at the RL learning rate
        from tms.methods.rl_config import rollout_steps, validate_rl
        from tms.methods.rl_stage import rl_learning_rate

        config = validate_rl(cfg, len(train))
        lr_key = "rl.lr" if cfg.rl.get("lr") is not None else "sft.optimizer.lr x rl.lr_scale (the RL learning rate)"
        optimizer = check_optimizer(cfg.sft.optimizer, "sft.optimizer", lr=rl_learning_rate(cfg), lr_key=lr_key)
        steps = rollout_steps(cfg, len(train), world) * config.num_iterations
    else:
        check_batch_sizes(cfg, len(train), world)
        steps = stage1_steps(cfg, len(train), world, accumulation(cfg.sft, cfg.trainer))
    check_scheduler(cfg.sft.get("scheduler"), "sft.scheduler", optimizer, steps)
    if cfg.harvest.get("prompt_subset") is not None and harvests:
        require(int(cfg.harvest.prompt_subset) <= len(train), "harvest.prompt_subset",
                f"{cfg.harvest.prompt_subset} is larger than the {len(train)} training prompts")
    check_lengths(cfg, task, train)


def stage1_steps(cfg: DictConfig, n_train: int, world: int, accumulate: int) -> int:
    """Optimiser steps of Stage 1 (and of the student, which trains with its hyperparameters on the same prompts);
    checks T, ``sft.grid`` and ``student.num_checkpoints`` against them."""
    T = int(cfg.sft.num_checkpoints)
    steps = optimizer_steps(n_train, int(cfg.sft.batch_size), world, accumulate, int(cfg.sft.epochs),
                            int(cfg.sft.get("max_steps") or -1))
    require(T <= steps, "sft.num_checkpoints",
            f"T={T} is larger than the {steps} optimiser steps of Stage 1 ({n_train} examples, batch "
            f"{cfg.sft.batch_size}, accumulation {accumulate}, {cfg.sft.epochs} epochs); lower T or train longer")
    grid = cfg.sft.get("grid")  # a T sweep's shared Stage 1 (conf/hparams/T.yaml)
    if grid is not None:
        ok = len(grid) > 0 and all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in grid)
        require(ok, "sft.grid", f"must be a non-empty list of integers >= 1 (the T values of the sweep), got {grid!r}")
        require(T in set(grid), "sft.grid", f"{list(grid)} does not contain sft.num_checkpoints={T}")
        require(max(grid) <= steps, "sft.grid", f"T={max(grid)} is larger than the {steps} optimiser steps of Stage 1")
    if cfg.method.kind == "student":
        S = cfg.student.num_checkpoints
        require(S <= steps, "student.num_checkpoints", f"{S} is larger than the student's {steps} optimiser steps")
    return steps
