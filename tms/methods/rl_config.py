"""Hyperparameters of the RL baselines (the ``rl:`` block of ``conf/method/{grpo,reinforce}.yaml``).

:class:`RLConfig` holds what the :class:`~tms.methods.rl.RLModule` needs per step and validates
itself; :func:`validate_rl` checks the stage-level keys (budget, checkpoints, backend, reward) of a
composed config before any compute. Every error names the ``rl.<key>`` to fix.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from omegaconf import DictConfig

from tms.core.checks import check_target, integer, number, optimizer_steps, require
from tms.core.distributed import world_size
from tms.core.errors import ConfigError
from tms.objectives.policy_gradient import AGGREGATIONS

#: advantage baselines: GRPO's group mean (optionally std-scaled), REINFORCE's moving average, RLOO
BASELINES = ("group", "ema", "leave_one_out")
#: keys of the ``rl`` block read by the stage (the per-step ones are the fields of :class:`RLConfig`)
STAGE_KEYS = ("prompts_per_step", "epochs", "max_steps", "lr", "lr_scale", "num_checkpoints", "reward", "backend",
              "vllm_sync")


class UnsupportedOption(ConfigError, NotImplementedError):
    """A configuration asking for something that is not implemented; the message names the key."""


@dataclasses.dataclass
class RLConfig:
    """Per-step RL hyperparameters: the schema (types and checks) of the ``rl`` block. Their defaults and what each
    one means live in one place, ``conf/method/grpo.yaml`` (REINFORCE inherits them); build it with :meth:`from_config`."""

    num_generations: int
    temperature: float
    top_p: float
    max_new_tokens: int
    epsilon: float
    epsilon_high: float | None
    num_iterations: int
    beta: float
    baseline: str
    scale_rewards: bool
    momentum: float
    loss_aggregation: str
    gradient_clip_val: float | None
    micro_batch_size: int
    generation_batch_size: int
    log_kl: bool

    def __post_init__(self) -> None:
        for key in ("num_generations", "max_new_tokens", "num_iterations", "micro_batch_size", "generation_batch_size"):
            integer(f"rl.{key}", getattr(self, key))
        number("rl.temperature", self.temperature, 0, open_low=True)  # on-policy sampling: greedy has no log-probs
        number("rl.top_p", self.top_p, 0, 1, open_low=True)
        number("rl.epsilon", self.epsilon, 0, 1, open_high=True)
        number("rl.epsilon_high", self.epsilon_high, 0, optional=True)
        number("rl.beta", self.beta, 0)
        require(self.baseline in BASELINES, "rl.baseline", f"must be one of {BASELINES}, got {self.baseline!r}")
        require(self.baseline == "ema" or self.num_generations >= 2, "rl.num_generations",
                f"baseline={self.baseline!r} compares samples of one prompt and needs >= 2, got {self.num_generations}")
        number("rl.momentum", self.momentum, 0, 1)
        require(self.loss_aggregation in AGGREGATIONS, "rl.loss_aggregation",
                f"must be one of {AGGREGATIONS}, got {self.loss_aggregation!r}")
        number("rl.gradient_clip_val", self.gradient_clip_val, 0, open_low=True, optional=True)
        for key in ("scale_rewards", "log_kl"):
            value = getattr(self, key)
            require(isinstance(value, bool), f"rl.{key}", f"must be true or false, got {value!r}")

    @classmethod
    def from_config(cls, node: DictConfig | dict[str, Any]) -> "RLConfig":
        """The fields of ``node`` that :class:`RLConfig` knows (the stage-level keys are ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in names if k not in node]
        if missing:
            raise ConfigError(f"rl.{missing[0]}: missing (every rl key has its default in conf/method/grpo.yaml; "
                              f"an rl block of your own needs {missing})")
        return cls(**{k: node[k] for k in names})

    @property
    def needs_reference(self) -> bool:
        """Whether the frozen θ0 is needed: for the KL penalty, or to log the KL."""
        return self.beta > 0 or self.log_kl


def rl_learning_rate(cfg: DictConfig) -> float:
    """``rl.lr`` if set, else ``rl.lr_scale`` (default 1) × ``sft.optimizer.lr``."""
    if cfg.rl.get("lr") is not None:
        return float(cfg.rl.lr)
    return float(cfg.rl.get("lr_scale", 1.0)) * float(cfg.sft.optimizer.lr)


def prompts_per_device(cfg: DictConfig, world: int) -> int:
    """Each rank's share of a rollout: ``rl.prompts_per_step`` (P, the prompts of one optimiser step over all
    devices and nodes, like ``sft.effective_batch_size``) / world. :func:`validate_rl` checks that it divides."""
    return int(cfg.rl.prompts_per_step) // max(1, int(world))


def rollout_steps(cfg: DictConfig, n_prompts: int, world: int) -> int:
    """Rollouts of the run: ⌈⌈n / world⌉ / (P / world)⌉ per epoch × epochs, capped by ``rl.max_steps``.

    With P = ``sft.effective_batch_size`` (the default) this is SFT's optimiser-step count on every device
    count whose accumulation divides evenly: ⌈⌈n / world⌉ / (batch · accumulation)⌉ with batch · accumulation
    · world = P (the matched budget)."""
    rl = cfg.rl
    return optimizer_steps(n_prompts, prompts_per_device(cfg, world), world, 1, int(rl.epochs),
                           int(rl.get("max_steps") or -1))


def validate_rl(cfg: DictConfig, n_prompts: int | None = None) -> RLConfig:
    """Check every key of the ``rl`` block of a composed config (and the budget against ``n_prompts``).

    Called by :func:`tms.config.validate.validate` before any compute, and again by the RL stage.
    """

    require(cfg.get("rl") is not None, "rl", "method.kind=rl needs an rl: block (use method=grpo or method=reinforce)")
    rl = cfg.rl
    known = {f.name for f in dataclasses.fields(RLConfig)} | set(STAGE_KEYS)
    unknown = [k for k in rl if k not in known]
    require(not unknown, f"rl.{unknown[0]}" if unknown else "rl",
            f"unknown key (nothing reads it); the keys of rl are {sorted(known)}. Fix its spelling or remove it")
    if rl.get("backend", "hf") != "hf":
        raise UnsupportedOption(f"rl.backend: {rl.backend!r} is not implemented (vLLM rollouts with in-process weight "
                                "sync after each optimiser step, rl.vllm_sync); use rl.backend=hf")
    if rl.get("vllm_sync"):
        raise UnsupportedOption("rl.vllm_sync: true (vLLM rollouts with in-process weight sync after each optimiser "
                                "step) is not implemented; use rl.backend=hf and rl.vllm_sync=false")
    for key in ("prompts_per_step", "epochs", "num_checkpoints"):
        integer(f"rl.{key}", rl.get(key))
    max_steps = rl.get("max_steps")
    require(max_steps is None or (isinstance(max_steps, int) and not isinstance(max_steps, bool)
                                  and (max_steps == -1 or max_steps >= 1)), "rl.max_steps",
            f"must be -1 (derived from rl.epochs) or an integer >= 1, got {max_steps!r}")
    number("rl.lr", rl.get("lr"), 0, open_low=True, optional=True)  # null: rl.lr_scale * sft.optimizer.lr
    number("rl.lr_scale", rl.get("lr_scale", 1.0), 0, open_low=True)
    check_reward(rl.get("reward"))
    config = RLConfig.from_config(rl)
    if n_prompts is not None:
        world = world_size(cfg.trainer)
        require(int(rl.prompts_per_step) % world == 0, "rl.prompts_per_step",
                f"{rl.prompts_per_step} prompts per optimiser step (over all devices; default sft.effective_batch_size) "
                f"do not divide evenly over {world} device(s): use a multiple of {world}")
        require(int(rl.prompts_per_step) <= n_prompts, "rl.prompts_per_step",
                f"{rl.prompts_per_step} prompts per optimiser step is more than the {n_prompts} training prompts; "
                "lower rl.prompts_per_step (default: sft.effective_batch_size) or use more data (data.train_limit)")
        steps = rollout_steps(cfg, n_prompts, world) * config.num_iterations
        require(int(rl.num_checkpoints) <= steps, "rl.num_checkpoints",
                f"{rl.num_checkpoints} is larger than the {steps} optimiser steps of the run; lower it or train longer")
    return config


def check_reward(node: DictConfig | None) -> None:
    """``rl.reward``: a Hydra node whose ``_target_`` imports and takes its arguments (not built: a reward may load
    a judge model)."""

    require(node is not None and "_target_" in node, "rl.reward",
            "must be a Hydra node with a _target_ (e.g. tms.methods.rewards.VerifierReward)")
    check_target(node, "rl.reward")


def reward_summary(history: list[float], fraction: float = 0.2) -> dict[str, Any]:
    """Mean rollout reward over the first and the last ``fraction`` of the rollouts (at least one each)."""
    if not history:
        return {"rollouts": 0}
    k = max(1, int(math.ceil(fraction * len(history))))
    first, last = history[:k], history[-k:]
    return {"rollouts": len(history), "fraction": fraction, "first_mean": sum(first) / k, "last_mean": sum(last) / k}


__all__ = ["BASELINES", "ConfigError", "RLConfig", "STAGE_KEYS", "UnsupportedOption", "check_reward", "reward_summary",
           "rollout_steps", "validate_rl"]
