"""Validate the composed config and its inputs before any compute.

Every error names the config key (or the file) and says how to fix it. ``validate(cfg)`` is called
by the pipeline before the first stage, so an invalid run writes nothing.
"""
from __future__ import annotations

import math
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

KINDS = ("sft", "student", "rl")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


def require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def build(node: DictConfig, key: str):
    """``instantiate(node)``, turning a constructor's ValueError into a ConfigError naming ``key``."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ or err
        msg = str(cause)
        raise ConfigError(msg if key in msg else f"{key}: {msg}") from err


def positive_int(cfg: DictConfig, key: str, value: Any, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, key, f"must be an integer >= {minimum}, got {value!r}")


def optimizer_steps(n_examples: int, batch_size: int, world: int, accumulate: int, epochs: int, max_steps: int) -> int:
    """Optimiser steps of a run: ⌈⌈n / world⌉ / batch⌉ micro-batches per epoch, ⌈· / accumulate⌉ steps per epoch."""
    per_epoch = math.ceil(math.ceil(math.ceil(n_examples / world) / batch_size) / accumulate)
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps and max_steps > 0 else total


def validate(cfg: DictConfig) -> None:
    """Check types, ranges, files and cross-field constraints of a pipeline config and its inputs."""
    from tms.generation.factory import check_backend
    from tms.input_checks import check_batch_sizes, check_lengths, check_no_secrets
    from tms.models import check_model_source
    from tms.training import accumulation, world_size

    require(cfg.method.get("kind") in KINDS, "method.kind", f"must be one of {KINDS}, got {cfg.method.get('kind')!r}")
    positive_int(cfg, "seed", cfg.seed, minimum=0)
    T = cfg.sft.num_checkpoints
    positive_int(cfg, "sft.num_checkpoints", T)
    positive_int(cfg, "sft.batch_size", cfg.sft.batch_size)
    positive_int(cfg, "sft.epochs", cfg.sft.epochs)
    positive_int(cfg, "data.max_length", cfg.data.max_length, minimum=2)
    positive_int(cfg, "data.max_new_tokens", cfg.data.max_new_tokens)
    for key in ("train_limit", "val_limit"):
        if cfg.data.get(key) is not None:
            positive_int(cfg, f"data.{key}", cfg.data[key], minimum=1 if key == "train_limit" else 0)
    positive_int(cfg, "trainer.checkpoint_every_n_steps", cfg.trainer.get("checkpoint_every_n_steps", 50))
    check_no_secrets(cfg)
    if cfg.model.get("name_or_path"):
        check_model_source(str(cfg.model.name_or_path))
    elif cfg.model.get("gguf") is not None:  # fails with the install command when the package is missing
        from tms.gguf import locate_gguf

        locate_gguf(cfg.model.gguf)
    else:
        require(cfg.model.get("build") is not None, "model.build",
                "needed when model.name_or_path and model.gguf are null (toy world)")

    if cfg.method.kind == "student":
        source = build(cfg.data.target_source, "data.target_source")
        try:
            ts = source.required_checkpoints(int(T))
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if ts:
            h = cfg.harvest
            check_backend(h.backend)
            positive_int(cfg, "harvest.samples_per_prompt", h.samples_per_prompt)
            positive_int(cfg, "harvest.shard_size", h.shard_size)
            positive_int(cfg, "harvest.batch_size", h.batch_size)
            require(float(h.temperature) >= 0, "harvest.temperature", f"must be >= 0, got {h.temperature}")
            require(0 < float(h.top_p) <= 1, "harvest.top_p", f"must be in (0, 1], got {h.top_p}")
            if h.get("prompt_subset") is not None:
                positive_int(cfg, "harvest.prompt_subset", h.prompt_subset)

    task = build(cfg.data.task, "data.task")
    try:
        train = task.examples("train", cfg.data.get("train_limit"))
    except ValueError as err:  # a data file that is empty, unreadable or has missing or mistyped fields
        raise ConfigError(f"data.task: {err}") from err
    require(len(train) > 0, "data.task", f"the train split of {task.name!r} is empty")
    check_batch_sizes(cfg, len(train), world_size(cfg.trainer))
    if cfg.harvest.get("prompt_subset") is not None and cfg.method.kind == "student":
        require(int(cfg.harvest.prompt_subset) <= len(train), "harvest.prompt_subset",
                f"{cfg.harvest.prompt_subset} is larger than the {len(train)} training prompts")
    steps = optimizer_steps(len(train), int(cfg.sft.batch_size), world_size(cfg.trainer), accumulation(cfg.sft, cfg.trainer),
                            int(cfg.sft.epochs), int(cfg.sft.get("max_steps") or -1))
    require(int(T) <= steps, "sft.num_checkpoints",
            f"T={T} is larger than the {steps} optimiser steps of Stage 1 ({len(train)} examples, batch "
            f"{cfg.sft.batch_size}, accumulation {accumulation(cfg.sft, cfg.trainer)}, {cfg.sft.epochs} epochs); "
            "lower T or train longer")
    grid = cfg.sft.get("grid")  # a T sweep's shared Stage 1 (conf/hparams/T.yaml)
    if grid is not None:
        ok = len(grid) > 0 and all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in grid)
        require(ok, "sft.grid", f"must be a non-empty list of integers >= 1 (the T values of the sweep), got {grid!r}")
        require(int(T) in set(grid), "sft.grid", f"{list(grid)} does not contain sft.num_checkpoints={T}")
        require(max(grid) <= steps, "sft.grid", f"T={max(grid)} is larger than the {steps} optimiser steps of Stage 1")
    if cfg.method.kind == "student":  # the student trains with Stage 1's hyperparameters on the same prompts
        S = cfg.student.num_checkpoints
        positive_int(cfg, "student.num_checkpoints", S)
        require(S <= steps, "student.num_checkpoints", f"{S} is larger than the student's {steps} optimiser steps")
    if cfg.get("eval") is not None:
        names = set(cfg.eval.benchmarks)
        require(cfg.eval.target in names, "eval.target", f"{cfg.eval.target!r} is not one of eval.benchmarks {sorted(names)}")
        for key in ("retention", "other_targets"):
            missing = [b for b in (cfg.eval.get(key) or []) if b not in names]
            require(not missing, f"eval.{key}", f"{missing} not in eval.benchmarks {sorted(names)}")
    check_lengths(cfg, task, train)
