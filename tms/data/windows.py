r"""Accumulation windows: each micro-batch carries the completion-token count of its optimiser step.

The training objective is the token mean over the whole optimiser step (:func:`tms.objectives.nll.step_token_mean`),
so the first micro-batch of a step must already know the tokens of the step's later micro-batches. As
Hugging Face ``Trainer`` does (``num_items_in_batch``), the loader reads the ``A`` micro-batches of an
accumulation window ahead (they are token ids, small next to the activations) and adds to each

* ``window_tokens``: the completion tokens of the whole window on this rank (a 0-dim long tensor; the module
  all-reduces it over ranks), and
* ``window_last``: whether it is the last micro-batch of its window (the step's loss is logged there).

Windows follow Lightning's accumulation: consecutive runs of ``A`` micro-batches from the first batch of the
epoch, the last one shorter when the epoch length is not a multiple of ``A``. A resumed epoch (which starts
``skipped`` batches in, a multiple of ``A`` since checkpoints follow optimiser steps) keeps the same windows.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import torch

from tms.data.position import ResumedDataLoader
from tms.objectives.nll import completion_mask


def with_window_tokens(batches: Iterable[dict[str, Any]], accumulate: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """Yield ``batches`` with ``window_tokens`` and ``window_last`` added (see the module docstring).

    ``start``: the epoch's index of the first batch (a resumed epoch); windows are aligned to multiples of
    ``accumulate`` counted from the epoch start.
    """
    accumulate = max(1, int(accumulate))
    it, pos = iter(batches), int(start)
    while True:
        window = list(itertools.islice(it, accumulate - pos % accumulate))
        if not window:
            return
        tokens = torch.tensor(sum(int(completion_mask(b["labels"]).sum()) for b in window), dtype=torch.long)
        for i, batch in enumerate(window):
            yield {**batch, "window_tokens": tokens, "window_last": i == len(window) - 1}
        pos += len(window)


class WindowedDataLoader(ResumedDataLoader):
    """A :class:`ResumedDataLoader` whose batches carry their accumulation window's token count."""

    def __init__(self, *args: Any, accumulate: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accumulate = int(accumulate)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return with_window_tokens(super().__iter__(), self.accumulate, start=self.skipped)
