"""The training blocks (``sft``, the toy world's ``model.build.pretrain``) and the ``trainer``, checked before any compute.

Optimiser and scheduler are built once on a dummy parameter (their constructors check their arguments); the trainer's
keys are checked against ``L.Trainer``'s signature and the keys tms sets itself
(:data:`tms.training.loop.RESERVED_TRAINER_KEYS`).
"""
from __future__ import annotations

import inspect
import typing

from omegaconf import DictConfig, OmegaConf

from tms.core.checks import (
    build,
    integer,
    is_number,
    known_keys,
    locate,
    number,
    optimizer_steps,
    require,
)
from tms.core.errors import ConfigError
from tms.training.loop import DEFAULT_TRAINER, RESERVED_TRAINER_KEYS, TMS_TRAINER_KEYS

#: keys of ``sft`` (and of the toy world's ``model.build.pretrain``, which trains with the same loop)
TRAIN_KEYS = ("num_checkpoints", "epochs", "max_steps", "batch_size", "effective_batch_size", "accumulate_grad_batches",
              "gradient_clip_val", "optimizer", "scheduler", "grid", "keep_resume_checkpoint", "packing")


# -- optimisation ---------------------------------------------------------------------------------------------------
def check_train_block(node: DictConfig, prefix: str) -> None:
    """The keys one training loop (:func:`tms.training.loop.fit`) reads: ``sft`` or ``model.build.pretrain``."""
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
    packing = node.get("packing", False)
    require(isinstance(packing, bool), f"{prefix}.packing", f"must be true or false, got {packing!r}")


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
    require("_target_" in node, key, "must be null or a Hydra node with a _target_ (e.g. tms.training.optim.cosine_with_warmup)")
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
    """Keys tms sets itself (:data:`tms.training.loop.RESERVED_TRAINER_KEYS`) or cannot work with
    (:data:`INCOMPATIBLE_TRAINER_KEYS`), keys ``L.Trainer`` does not take, and the values Lightning would only
    refuse when the trainer is built (after θ0 and earlier stages)."""
    import lightning as L

    target = locate("trainer._target_", str(trainer.get("_target_", DEFAULT_TRAINER)))
    require(isinstance(target, type) and issubclass(target, L.Trainer), "trainer._target_",
            f"{trainer.get('_target_')!r} is not lightning.pytorch.Trainer or a subclass of it")
    require(trainer.get("_partial_", True) is True, "trainer._partial_",
            "must be true: tms completes the trainer's arguments (budget, callbacks, logger) when it builds it")
    trainer = OmegaConf.create({k: v for k, v in trainer.items() if k not in ("_target_", "_partial_")})
    for key in trainer:
        require(key not in RESERVED_TRAINER_KEYS, f"trainer.{key}", RESERVED_TRAINER_KEYS.get(key, ""))
    for key, (accepts, instead) in INCOMPATIBLE_TRAINER_KEYS.items():
        if key in trainer:
            require(accepts(trainer[key]), f"trainer.{key}", f"{trainer[key]!r} is not supported: {instead}")
    takes = set(inspect.signature(target.__init__).parameters) - {"self"}
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
