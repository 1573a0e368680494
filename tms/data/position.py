"""Exact mid-epoch resume of the training data.

What Lightning 2.6 does by itself. On resuming a mid-epoch ``last.ckpt`` it restores its batch
counter (``fit_loop.epoch_loop.batch_progress``) but a plain ``DataLoader`` restarts the epoch at its
first batch, and the epoch ends when the counter reaches the epoch length: after a checkpoint at
micro-batch k of an N-batch epoch the resumed run trains batches 0..N-k-1 a second time and never
sees batches k..N-1 (Lightning only warns: "your dataloader is not resumable"). Lightning would
restore a loader that has ``state_dict``/``load_state_dict``, but not in the first epoch:
``configure_optimizers`` asks for ``trainer.estimated_stepping_batches``, which builds the train
loader *before* the checkpoint is restored, and that loader is kept for the epoch without its state
ever being loaded.

What we do. The data module saves a :class:`LoaderPosition` (epoch, micro-batches whose training
step finished) with its own state, which Lightning restores before it asks for any loader, and
applies it when it builds the loader of that epoch: the sampler starts after the consumed samples
and :class:`ResumedDataLoader` reports the full epoch length, so Lightning's restored counter (k)
and the epoch length (N) agree and the epoch ends after batch N-1. Checkpoints are written after an
optimiser step, so k is a multiple of the gradient accumulation and the accumulation windows of the
resumed epoch are those of an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch.utils.data import DataLoader


@dataclass(frozen=True)
class LoaderPosition:
    """Where training stands in the data: ``batches`` micro-batches of epoch ``epoch`` are done."""

    epoch: int = 0
    batches: int = 0

    @classmethod
    def of(cls, trainer) -> "LoaderPosition":
        """The position of a running fit: a checkpoint saved now resumes after these batches.

        ``batch_progress.current.processed`` counts the micro-batches of the epoch whose training
        step finished; Lightning resumes its own counter at the same number (it completes a batch
        that was checkpointed in ``on_train_batch_end``).
        """
        if trainer is None:
            return cls()
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return cls(int(trainer.current_epoch), int(progress.processed))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None) -> "LoaderPosition | None":
        return cls(int(state["epoch"]), int(state["batches"])) if state else None


class ResumedDataLoader(DataLoader):
    """A DataLoader whose sampler already skips the first ``skipped`` batches of the epoch.

    ``len()`` counts the skipped batches too: Lightning compares its batch counter, which resumes at
    ``skipped``, with the epoch length, and derives the number of optimiser steps from it.
    """

    def __init__(self, *args: Any, skipped: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped = int(skipped)

    def __len__(self) -> int:
        return self.skipped + super().__len__()
