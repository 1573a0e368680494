"""The RL stage of the pipeline: θ0 → GRPO / REINFORCE → HF checkpoints (``method.kind=rl``).

A cached stage like Stage 1 SFT (:func:`tms.stages.sft.train_stage`), keyed by the base model, the
data, the ``rl`` block, the shared optimiser/scheduler/trainer settings and the seed, plus the code
identity of the ``rl`` kind (:mod:`tms.core.code_identity`: the RL modules and the verifiers its reward uses). It trains an
:class:`~tms.methods.rl.RLModule` with the same :func:`tms.training.loop.fit` as every other stage, so it
runs under the same trainer/strategy/logger configs, writes ``checkpoints/t=XX`` HF directories and
``checkpoints/trajectory.json`` (the manifest's ``info["trajectory"]``), ``logs/metrics.csv`` and a
resumable ``lightning/last.ckpt``; plus ``rewards.json``: the mean reward of every rollout.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tms.core.cache import Stage
from tms.core.distributed import world_size
from tms.core.io import read_json, write_json
from tms.core.keys import plain, stage
from tms.data.datamodule import PostTrainDataModule
from tms.methods.rl import RLModule
from tms.methods.rl_config import (
    prompts_per_device,
    RLConfig,
    reward_summary,
    rl_learning_rate,
    validate_rl,
)
from tms.models.loading import load_tokenizer
from tms.core.tracking import log_samples
from tms.stages.common import ModelRef, data_key, module_kwargs, train_key
from tms.training.loop import fit

log = logging.getLogger(__name__)


def rl_key(cfg: DictConfig, base: ModelRef) -> dict[str, Any]:
    """Everything the RL stage depends on (``train_key`` carries the shared optimiser and scheduler)."""
    return {"base": base.identity, "data": data_key(cfg), "rl": plain(cfg.rl), "train": train_key(cfg),
            "seed": int(cfg.seed)}


def rl_train_config(cfg: DictConfig, config: RLConfig) -> DictConfig:
    """The train settings :func:`tms.training.loop.fit` reads, in optimiser steps.

    ``rl.max_steps`` counts rollouts; each is used for μ = ``num_iterations`` optimiser steps. Gradient
    accumulation and clipping are done by the module itself (manual optimisation), not by the trainer.
    """
    max_steps = int(cfg.rl.get("max_steps") or -1)
    return OmegaConf.create({"epochs": int(cfg.rl.epochs),
                             "max_steps": max_steps * config.num_iterations if max_steps > 0 else -1,
                             "accumulate_grad_batches": 1, "gradient_clip_val": None})


def run_rl(cfg: DictConfig, base: ModelRef) -> Stage:
    """Build (or reuse) the RL stage from θ0 = ``base``; returns the finished stage."""
    task = instantiate(cfg.data.task)
    config = validate_rl(cfg, len(task.examples("train", cfg.data.get("train_limit"))))

    def fill(out: Path, info: dict) -> None:  # every rank of a multi-process job takes part in trainer.fit
        rl = cfg.rl
        tok = load_tokenizer(base.path, trust_remote_code=bool(cfg.model.get("trust_remote_code", False)))
        dm = PostTrainDataModule(task, batch_size=prompts_per_device(cfg, world_size(cfg.trainer)), max_length=int(cfg.data.max_length),
                                 seed=int(cfg.seed), train_limit=cfg.data.get("train_limit"),
                                 val_limit=cfg.data.get("val_limit"), mode="prompts",
                                 batch_repeats=config.num_iterations).connect(tok)
        module = RLModule(base.path, optimizer=instantiate(cfg.sft.optimizer, lr=rl_learning_rate(cfg)),
                          scheduler=instantiate(cfg.sft.scheduler), **module_kwargs(cfg),
                          reward_fn=instantiate(rl.reward), rl=config, seed=int(cfg.seed),
                          rollout_samples=log_samples(cfg, "rollouts"), rollout_every=log_samples(cfg, "rollout_every"))
        info.update(fit(module, dm, tok, out, rl_train_config(cfg, config), cfg.trainer, cfg.get("logger"),
                        seed=int(cfg.seed), num_checkpoints=int(rl.num_checkpoints), name="rl", callbacks=cfg.get("callbacks")))
        info["train_examples"] = len(dm.train_examples)
        history = module.reward_history
        if not history and (out / "rewards.json").is_file():  # fit returned a finished run's info untrained
            history = read_json(out / "rewards.json")["per_rollout"]
        info["rewards"] = reward_summary(history)
        if module._trainer is None or module.trainer.is_global_zero:
            write_json(out / "rewards.json", {**info["rewards"], "per_rollout": history})
        log.info("rl: mean reward %.3f over the first and %.3f over the last 20%% of %d rollouts",
                 info["rewards"].get("first_mean", float("nan")), info["rewards"].get("last_mean", float("nan")),
                 info["rewards"]["rollouts"])

    return stage(cfg, "rl", rl_key(cfg, base)).ensure(fill, seed=int(cfg.seed), ranks="all")
