"""Lightning callbacks: the T trajectory checkpoints (with the PLD curve) and throughput logging; when a step's
logged values reach the logger (:func:`logs_this_step`)."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from tms.core.io import read_json, write_json


def logs_this_step(trainer) -> bool:
    """Whether the logger writes the ``on_step`` values logged during the current training step: every
    ``trainer.log_every_n_steps``-th optimiser step (Lightning discards the values of the others). What Lightning's
    own callbacks ask (``LearningRateMonitor``, ``ThroughputMonitor``:
    ``trainer._logger_connector.should_update_logs``); True where a trainer does not say (so nothing is lost)."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def checkpoint_steps(total_steps: int, T: int) -> list[int]:
    r"""The optimiser steps at which the T trajectory checkpoints are saved.

    :math:`s_t = \lfloor t N / T + \tfrac12 \rfloor` for t = 1..T: equally spaced, the last one at
    the end of training (:math:`s_T = N`). Requires 1 <= T <= N so that the steps are distinct.
    """
    if T < 1:
        raise ValueError(f"sft.num_checkpoints (T) must be >= 1, got {T}")
    if total_steps < T:
        raise ValueError(
            f"sft.num_checkpoints (T={T}) is larger than the number of optimiser steps ({total_steps}); "
            "lower T or train for more steps (more data, epochs or a smaller effective batch)"
        )
    return [(2 * t * total_steps + T) // (2 * T) for t in range(1, T + 1)]


def grid_steps(total_steps: int, Ts) -> list[int]:
    """The union of the equally spaced grids :func:`checkpoint_steps` of every T in ``Ts`` (sorted, distinct).

    A Stage 1 that saves these contains, for each T, exactly the checkpoints a Stage 1 with that T
    would save (training does not depend on when checkpoints are saved), so a T sweep shares one Stage 1.
    """
    return sorted({s for T in Ts for s in checkpoint_steps(total_steps, int(T))})


class TrajectoryCheckpoints(L.Callback):
    """Save T equally spaced HF checkpoints ``<dirpath>/t=XX`` and the held-out NLL at each.

    The index ``trajectory.json`` in ``dirpath`` maps t to its optimiser step, directory and PLD
    (validation NLL of the references), i.e. the data of the paper's Table 1 / failure mode A.
    Checkpoints that already exist with their index entry (a resumed run) are not written again.
    With ``grid`` (a list of T's) the checkpoints are the union of their grids (:func:`grid_steps`),
    numbered 1..len(union) in step order; the index records the grid.
    """

    def __init__(self, dirpath: str | Path, num_checkpoints: int, tokenizer, val_loader_fn=None,
                 grid=None) -> None:
        self.dirpath, self.T, self.tokenizer = Path(dirpath), int(num_checkpoints), tokenizer
        self.val_loader_fn = val_loader_fn
        self.grid = sorted(int(t) for t in grid) if grid else None
        self.steps: list[int] = []
        self._visited: set[int] = set()

    @property
    def index_path(self) -> Path:
        return self.dirpath / "trajectory.json"

    def load_index(self) -> dict:
        return read_json(self.index_path) if self.index_path.exists() else {"checkpoints": {}}

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        total = int(trainer.estimated_stepping_batches)
        self.steps = grid_steps(total, self.grid) if self.grid else checkpoint_steps(total, self.T)
        self.T = len(self.steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step not in self.steps:
            return
        if step in self._visited:  # the micro-batches of the next accumulation window still see this step
            return
        self._visited.add(step)
        t = self.steps.index(step) + 1
        out = self.dirpath / f"t={t:02d}"
        # saved before a crash (a directory without its index entry is exported again); rank 0 writes the index,
        # so its view decides on every rank (exporting is collective under DDP/FSDP)
        if trainer.strategy.broadcast(out.exists() and str(t) in self.load_index()["checkpoints"]):
            return
        pld = pl_module.reference_nll(self.val_loader_fn()) if self.val_loader_fn is not None else {}
        pl_module.export_hf(out, self.tokenizer)
        for k, v in pld.items():
            pl_module.log(f"val/{k}", v, on_step=True, on_epoch=False, rank_zero_only=True)
        if trainer.is_global_zero:
            index = self.load_index()
            index["T"], index["total_steps"] = self.T, int(trainer.estimated_stepping_batches)
            if self.grid:
                index["grid"] = self.grid
            index["checkpoints"][str(t)] = {"step": step, "path": out.name, **pld}
            write_json(self.index_path, index)


class Throughput(L.Callback):
    """Log ``train/tokens_per_s`` (non-padding tokens, summed over ranks) every ``every`` batches."""

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, int(every))
        self._tokens, self._t0, self._n = 0, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is not None:
            self._tokens += int(mask.sum())
        self._n += 1
        if self._n % self.every == 0:
            dt = time.perf_counter() - self._t0
            rate = torch.tensor(self._tokens / max(dt, 1e-9), dtype=torch.float64)
            if trainer.world_size > 1:
                rate = trainer.strategy.reduce(rate.to(pl_module.device), reduce_op="sum").cpu()
            pl_module.log("train/tokens_per_s", float(rate), on_step=True, on_epoch=False, rank_zero_only=True)
            self._tokens, self._t0 = 0, time.perf_counter()
