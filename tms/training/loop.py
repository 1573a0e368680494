"""Run one training stage (Stage 1 SFT, the student, θ0 pretraining, RL) with Lightning.

Builds the trainer from the ``trainer`` config group, wires the callbacks (T trajectory
checkpoints with the PLD curve, throughput, Lightning's resumable ``last.ckpt``, the RNG states, the
non-finite guard) and resumes from ``last.ckpt`` when the stage directory already holds one: weights,
optimiser, scheduler, loop counters, RNG states and the data position, so the resumed run trains on
exactly the batches the uninterrupted one would have (see :mod:`tms.training.resume`, :mod:`tms.data.position`).
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tms.core.distributed import accumulation
from tms.core.errors import ConfigError
from tms.core.io import read_json, write_json
from tms.core.tracking import logger_kwargs
from tms.models.strategies import build_strategy
from tms.training.callbacks import Throughput, TrajectoryCheckpoints
from tms.training.numerics import NonFiniteGuard
from tms.training.resume import AtomicCheckpointIO, RNGState

log = logging.getLogger(__name__)

FINISHED = "fit.json"  # written by a completed fit (see fit)

#: ``L.Trainer`` arguments that :func:`build_trainer` sets itself, each with what to configure instead. A
#: ``trainer.<key>`` of these would clash with them; :func:`tms.config.validate.validate` refuses it before any compute.
RESERVED_TRAINER_KEYS = {
    "max_epochs": "set by tms; use sft.epochs (rl.epochs for method=grpo/reinforce)",
    "max_steps": "set by tms; use sft.max_steps (rl.max_steps for method=grpo/reinforce)",
    "accumulate_grad_batches": "set by tms; use sft.accumulate_grad_batches or sft.effective_batch_size",
    "gradient_clip_val": "set by tms; use sft.gradient_clip_val (rl.gradient_clip_val for method=grpo/reinforce)",
    "callbacks": "set by tms (trajectory checkpoints, throughput, resume, RNG state, non-finite guard)",
    "logger": "set by tms; choose the logger config group instead (logger=csv, logger=wandb, logger.<key>=...)",
    "default_root_dir": "set by tms (the stage directory under cache_dir); set cache_dir instead",
    "reload_dataloaders_every_n_epochs": "set by tms to 1 (the target source draws fresh targets every epoch)",
    "use_distributed_sampler": "set by tms to false (the data module shards the examples by rank itself)",
    "num_sanity_val_steps": "set by tms to 0 (the PLD is computed at the trajectory checkpoints)",
    "limit_val_batches": "set by tms to 0 (the PLD is computed at the trajectory checkpoints); use data.val_limit",
    "plugins": "set by tms (atomic checkpoint IO)",
}
#: keys of the ``trainer`` config group that tms reads itself (not passed to ``L.Trainer`` as they are)
#: what ``trainer._target_`` defaults to (the trainer node of a config that names none)
DEFAULT_TRAINER = "lightning.pytorch.Trainer"
TMS_TRAINER_KEYS = ("checkpoint_every_n_steps", "name", "strategy")


def build_logger(logger_cfg: DictConfig | None, save_dir: Path, name: str):
    """CSV by default; any Lightning logger through ``_target_`` (W&B: ``logger=wandb``).

    ``save_dir`` is the stage directory; ``name`` (the stage) is used when the config sets none.
    W&B runs get their group, config and privacy settings from :func:`tms.core.tracking.logger_kwargs`.
    """
    if not logger_cfg:
        return False
    extra = {"name": name} if logger_cfg.get("name") is None else {}
    kwargs = {"save_dir": str(save_dir), **extra, **logger_kwargs(logger_cfg, save_dir, name)}
    return instantiate(logger_cfg, _convert_="all", **kwargs)  # plain dicts (W&B settings must be a dict)


def build_trainer(trainer_cfg: DictConfig, train_cfg: DictConfig, out_dir: Path, callbacks: list, logger,
                  extra_callbacks: DictConfig | None = None) -> L.Trainer:
    """The trainer of one training stage: the ``trainer`` node (``_target_`` = ``lightning.pytorch.Trainer`` or a
    subclass, ``_partial_: true``: its keys are the trainer's arguments, overridable) completed with what tms sets
    (:data:`RESERVED_TRAINER_KEYS`: the budget, tms's callbacks, logger, resume plugin), the strategy
    (:func:`~tms.models.strategies.build_strategy`) and the user's ``callbacks`` group (each a ``_target_`` node)."""
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
    ckpt_every = int(cfg.pop("checkpoint_every_n_steps", 50))
    cfg.pop("name", None)
    strategy = build_strategy(cfg.pop("strategy", "auto"))
    cfg.setdefault("_target_", DEFAULT_TRAINER)
    cfg["_partial_"] = True
    user = [instantiate(node) for node in (extra_callbacks or {}).values() if node is not None]
    callbacks = list(callbacks) + [
        RNGState(), NonFiniteGuard(),
        L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out_dir / "lightning"), filename="last", save_last=False,
                                            save_top_k=1, monitor=None, every_n_train_steps=ckpt_every,
                                            enable_version_counter=False),
    ] + user
    fixed = dict(
        max_epochs=int(train_cfg.get("epochs", 1)),
        max_steps=int(train_cfg.get("max_steps", -1) or -1),
        accumulate_grad_batches=accumulation(train_cfg, trainer_cfg),
        gradient_clip_val=train_cfg.get("gradient_clip_val"),
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(out_dir),
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        plugins=[AtomicCheckpointIO()],
    )
    assert fixed.keys() == RESERVED_TRAINER_KEYS.keys(), "RESERVED_TRAINER_KEYS must list what build_trainer sets"
    clash = [k for k in cfg if k in fixed]
    if clash:  # validate() refuses these up front; this guards callers that skip it
        raise ConfigError(f"trainer.{clash[0]}: {RESERVED_TRAINER_KEYS[clash[0]]}")
    return instantiate(cfg)(strategy=strategy, **fixed)


def fit(module, datamodule, tokenizer, out_dir: Path, train_cfg: DictConfig, trainer_cfg: DictConfig,
        logger_cfg: DictConfig | None, seed: int, num_checkpoints: int, name: str,
        grid: list[int] | None = None, callbacks: DictConfig | None = None) -> dict[str, Any]:
    """Train ``module`` on ``datamodule`` into ``out_dir``; returns info for the stage manifest.

    Outputs: ``checkpoints/t=XX`` (HF directories, T of them, the last one at the final step),
    ``checkpoints/trajectory.json`` (step and PLD per checkpoint), ``mixture_counts.json``,
    ``logs/`` (metrics.csv) and ``lightning/last.ckpt`` (for resuming). ``callbacks``: the config's ``callbacks``
    group (extra Lightning callbacks, each a ``_target_`` node), added to tms's own. A finished fit writes
    ``fit.json`` (the returned info) before it deletes ``lightning/``; a re-run that finds it returns it.
    """
    out_dir = Path(out_dir)
    if (out_dir / FINISHED).is_file():  # killed after training, before the stage was published
        return read_json(out_dir / FINISHED)
    L.seed_everything(int(seed), workers=True, verbose=False)
    traj = TrajectoryCheckpoints(out_dir / "checkpoints", num_checkpoints, tokenizer, val_loader_fn=datamodule.val_dataloader,
                                 grid=grid)
    trainer = build_trainer(trainer_cfg, train_cfg, out_dir, [traj, Throughput(trainer_cfg.get("log_every_n_steps", 10))],
                            build_logger(logger_cfg, out_dir, name), callbacks)
    last = out_dir / "lightning" / "last.ckpt"
    t0 = time.time()
    resumed = last.is_file()
    if resumed:
        log.info("%s: resuming training from %s", name, last)
    with warnings.catch_warnings():
        # the data module restores the data position itself (tms.data.position): Lightning's warning does not apply
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # resuming
        # RL (manual optimisation) checkpoints after the optimiser step of the batch the loop counts as done: a
        # resume continues with the next rollout, which is what we want
        warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
        # the held-out references are scored by TrajectoryCheckpoints (the PLD curve), not by a validation loop
        warnings.filterwarnings("ignore", message=".*val_dataloader.* but have no `validation_step`.*")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resumed else None, weights_only=True)
    elapsed = time.time() - t0
    if trainer.is_global_zero:
        write_json(out_dir / "mixture_counts.json", {str(k): v for k, v in sorted(datamodule.mixture_counts.items())})
    index = traj.load_index()
    missing = [t for t in range(1, len(traj.steps) + 1) if str(t) not in index["checkpoints"]]
    if missing:
        raise RuntimeError(f"{name}: training ended without trajectory checkpoints {missing} (steps {traj.steps})")
    info = {
        "global_steps": int(trainer.global_step),
        "train_seconds": round(elapsed, 2),
        "resumed": resumed,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "trajectory": index,
        "dropped_examples": dict(datamodule.dropped),
    }
    if trainer.is_global_zero:
        write_json(out_dir / FINISHED, info)
        if not train_cfg.get("keep_resume_checkpoint", False):
            # the stage is complete: the resumable state (weights + optimiser, ~3x the model) is no longer needed
            import shutil

            shutil.rmtree(out_dir / "lightning", ignore_errors=True)
    return info
