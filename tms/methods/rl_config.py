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

from tms.rl_losses import AGGREGATIONS
from tms.validation import ConfigError, optimizer_steps, require

#: advantage baselines: GRPO's group mean (optionally std-scaled), REINFORCE's moving average, RLOO
BASELINES = ("group", "ema", "leave_one_out")


@dataclasses.dataclass
class RLConfig:
    """Per-step RL hyperparameters (see ``conf/method/grpo.yaml`` for what each one means)."""

    num_generations: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    epsilon: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    beta: float = 0.0
    baseline: str = "group"
    scale_rewards: bool = True
    momentum: float = 0.9
    loss_aggregation: str = "token_mean"
    gradient_clip_val: float | None = 1.0
    micro_batch_size: int = 64
    generation_batch_size: int = 256
    log_kl: bool = False

    def __post_init__(self) -> None:
        for key in ("num_generations", "max_new_tokens", "num_iterations", "micro_batch_size", "generation_batch_size"):
            value = getattr(self, key)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"rl.{key}",
                    f"must be an integer >= 1, got {value!r}")
        require(self.temperature > 0, "rl.temperature", f"must be > 0 (on-policy sampling), got {self.temperature}")
        require(0 < self.top_p <= 1, "rl.top_p", f"must be in (0, 1], got {self.top_p}")
        require(0 <= self.epsilon < 1, "rl.epsilon", f"must be in [0, 1), got {self.epsilon}")
        require(self.epsilon_high is None or self.epsilon_high >= 0, "rl.epsilon_high",
                f"must be null or >= 0, got {self.epsilon_high}")
        require(self.beta >= 0, "rl.beta", f"must be >= 0, got {self.beta}")
        require(self.baseline in BASELINES, "rl.baseline", f"must be one of {BASELINES}, got {self.baseline!r}")
        require(self.baseline == "ema" or self.num_generations >= 2, "rl.num_generations",
                f"baseline={self.baseline!r} compares samples of one prompt and needs >= 2, got {self.num_generations}")
        require(0 <= self.momentum <= 1, "rl.momentum", f"must be in [0, 1], got {self.momentum}")
        require(self.loss_aggregation in AGGREGATIONS, "rl.loss_aggregation",
                f"must be one of {AGGREGATIONS}, got {self.loss_aggregation!r}")
        require(self.gradient_clip_val is None or self.gradient_clip_val > 0, "rl.gradient_clip_val",
                f"must be null or > 0, got {self.gradient_clip_val}")

    @classmethod
    def from_config(cls, node: DictConfig | dict[str, Any]) -> "RLConfig":
        """The fields of ``node`` that :class:`RLConfig` knows (the stage-level keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: node[k] for k in names if k in node})

    @property
    def needs_reference(self) -> bool:
        """Whether the frozen θ0 is needed: for the KL penalty, or to log the KL."""
        return self.beta > 0 or self.log_kl


def rollout_steps(cfg: DictConfig, n_prompts: int, world: int) -> int:
    """Rollouts of the run: ⌈⌈n / world⌉ / prompts_per_step⌉ per epoch × epochs, capped by ``rl.max_steps``."""
    rl = cfg.rl
    return optimizer_steps(n_prompts, int(rl.prompts_per_step), world, 1, int(rl.epochs), int(rl.get("max_steps") or -1))


def validate_rl(cfg: DictConfig, n_prompts: int | None = None) -> RLConfig:
    """Check the ``rl`` block of a composed config (and the budget against ``n_prompts``)."""
    from tms.training import world_size

    require(cfg.get("rl") is not None, "rl", "method.kind=rl needs an rl: block (use method=grpo or method=reinforce)")
    rl = cfg.rl
    if rl.get("backend", "hf") != "hf" or rl.get("vllm_sync", False):
        raise NotImplementedError(
            "rl.backend=vllm / rl.vllm_sync=true (vLLM rollouts with in-process weight sync after each optimiser "
            "step) is not implemented; use rl.backend=hf and rl.vllm_sync=false")
    for key in ("prompts_per_step", "epochs", "num_checkpoints"):
        value = rl.get(key)
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"rl.{key}",
                f"must be an integer >= 1, got {value!r}")
    max_steps = rl.get("max_steps")
    require(max_steps is None or (isinstance(max_steps, int) and (max_steps == -1 or max_steps >= 1)), "rl.max_steps",
            f"must be -1 (derived from rl.epochs) or an integer >= 1, got {max_steps!r}")
    require(rl.get("lr") is None or float(rl.lr) > 0, "rl.lr",
            f"must be null (rl.lr_scale * sft.optimizer.lr) or > 0, got {rl.get('lr')}")
    require(float(rl.get("lr_scale", 1.0)) > 0, "rl.lr_scale", f"must be > 0, got {rl.get('lr_scale')}")
    require(rl.get("reward") is not None and "_target_" in rl.reward, "rl.reward",
            "must be a Hydra node with a _target_ (e.g. tms.rl_rewards.VerifierReward)")
    config = RLConfig.from_config(rl)
    if n_prompts is not None:
        steps = rollout_steps(cfg, n_prompts, world_size(cfg.trainer)) * config.num_iterations
        require(int(rl.num_checkpoints) <= steps, "rl.num_checkpoints",
                f"{rl.num_checkpoints} is larger than the {steps} optimiser steps of the run; lower it or train longer")
    return config


def reward_summary(history: list[float], fraction: float = 0.2) -> dict[str, Any]:
    """Mean rollout reward over the first and the last ``fraction`` of the rollouts (at least one each)."""
    if not history:
        return {"rollouts": 0}
    k = max(1, int(math.ceil(fraction * len(history))))
    first, last = history[:k], history[-k:]
    return {"rollouts": len(history), "fraction": fraction, "first_mean": sum(first) / k, "last_mean": sum(last) / k}


__all__ = ["BASELINES", "ConfigError", "RLConfig", "reward_summary", "rollout_steps", "validate_rl"]
