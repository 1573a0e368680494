"""Stage 1 (SFT of θ0 on the references, saving T equally spaced checkpoints) and the training stage every
SFT-style run uses (Stage 1 and the students of TMS, Self-SFT and Final-SFT share its code and hyperparameters)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.core.cache import Stage
from tms.core.keys import stage
from tms.data.datamodule import PostTrainDataModule
from tms.data.sources import ReferenceSource
from tms.methods.sft import SFTModule
from tms.models.loading import load_tokenizer
from tms.stages.common import (
    ModelRef,
    data_key,
    final_checkpoint,
    module_kwargs,
    train_key,
)
from tms.training.callbacks import checkpoint_steps
from tms.training.loop import fit


def train_stage(cfg: DictConfig, name: str, key: dict[str, Any], init: ModelRef, source, buffer, T: int | None,
                num_checkpoints: int, grid: list[int] | None = None, extra: tuple[str, ...] = ()) -> Stage:
    """Build (or reuse) a training stage: SFT-style training of ``init`` on ``source`` targets.

    In a multi-process job every rank trains (``Stage.ensure``: rank 0 alone locks and publishes);
    ``grid`` (Stage 1 of a T sweep): save the union of the equally spaced grids of these T's;
    ``extra``: code parts added to the stage's code identity (:data:`tms.core.code_identity.PARTS`).
    """
    def fill(out: Path, info: dict) -> None:  # every rank of a multi-process job takes part in trainer.fit
        tok = load_tokenizer(init.path, trust_remote_code=bool(cfg.model.get("trust_remote_code", False)))
        dm = PostTrainDataModule(instantiate(cfg.data.task), source, batch_size=int(cfg.sft.batch_size),
                                 max_length=int(cfg.data.max_length), seed=int(cfg.seed),
                                 train_limit=cfg.data.get("train_limit"), val_limit=cfg.data.get("val_limit"),
                                 buffer=buffer, T=T, packing=bool(cfg.sft.get("packing", False))).connect(tok)
        module = SFTModule(init.path, optimizer=instantiate(cfg.sft.optimizer), scheduler=instantiate(cfg.sft.scheduler),
                           **module_kwargs(cfg))
        info.update(fit(module, dm, tok, out, cfg.sft, cfg.trainer, cfg.get("logger"), seed=int(cfg.seed),
                        num_checkpoints=num_checkpoints, name=name, callbacks=cfg.get("callbacks"),
                        **({"grid": grid} if grid else {})))
        info["train_examples"] = len(dm.train_examples)

    return stage(cfg, name, key, extra).ensure(fill, seed=int(cfg.seed), ranks="all")


def run_sft(cfg: DictConfig, base: ModelRef) -> Stage:
    """Stage 1: SFT of θ0 on the references, saving T equally spaced checkpoints."""
    return train_stage(cfg, "sft", sft_key(cfg, base), base, ReferenceSource(), None, None, int(cfg.sft.num_checkpoints),
                       grid=shared_grid(cfg))


def sft_key(cfg: DictConfig, base: ModelRef) -> dict[str, Any]:
    """Everything Stage 1 depends on (not the target source, α or p(t): sweeps over those share it).

    With ``sft.grid`` (a T sweep) the key holds the grid instead of T, so every T of the sweep shares it.
    """
    key = {"base": base.identity, "data": data_key(cfg), "train": train_key(cfg), "T": int(cfg.sft.num_checkpoints),
           "seed": int(cfg.seed)}
    grid = shared_grid(cfg)
    if grid:
        del key["T"], key["train"]["sft"]["num_checkpoints"]
        key["grid"] = grid
    return key


def shared_grid(cfg: DictConfig) -> list[int] | None:
    """``sft.grid``: the T values whose checkpoint grids one Stage 1 saves together (a T sweep), sorted; else None."""
    grid = cfg.sft.get("grid")
    return sorted({int(t) for t in grid}) if grid else None


def stage1_indices(sft: Stage | None, T: int, ts: list[int]) -> dict[int, int]:
    """Stage 1's checkpoint index of each t in ``ts`` (the t-th of T equally spaced checkpoints; 0 = θ0).

    The identity unless Stage 1 saved a shared grid (``sft.grid``): then checkpoint t of T is the one
    saved at step round(t·N/T) (:func:`tms.training.callbacks.checkpoint_steps`), which
    the grid contains, so a T-subset of one Stage 1 is exactly what a Stage 1 run with T would save.
    """
    traj = sft.manifest()["info"]["trajectory"] if sft is not None else {}
    if not traj.get("grid"):
        return {t: t for t in ts}
    by_step = {int(e["step"]): int(k) for k, e in traj["checkpoints"].items()}
    steps = checkpoint_steps(int(traj["total_steps"]), int(T))
    return {t: (0 if t == 0 else by_step[steps[t - 1]]) for t in ts}


def checkpoint_ref(sft: Stage | None, base: ModelRef, t: int) -> tuple[ModelRef, int]:
    """Model and optimiser step of checkpoint t (0 = θ0)."""
    if t == 0:
        return base, 0
    entry = sft.manifest()["info"]["trajectory"]["checkpoints"][str(t)]
    return ModelRef(str(sft.dir / "checkpoints" / entry["path"]), {"stage": f"sft/{sft.hash}", "t": t}), int(entry["step"])


def cached_sft_final(cfg: DictConfig, base: ModelRef) -> ModelRef | None:
    """The SFT baseline's final model if Stage 1 with this config is already in the cache."""
    sft = stage(cfg, "sft", sft_key(cfg, base))
    return final_checkpoint(sft) if sft.done else None
