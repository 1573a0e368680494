"""The data module shared by every method.

It formats prompt + target with the tokenizer's chat template, masks the prompt (labels -100),
pads dynamically, and takes its training targets from a :class:`~tms.data.sources.TargetSource`.
Every epoch it asks the source for fresh targets, drawn reproducibly from ``(seed, epoch)``, and
records how many examples drew each kind of target (``mixture_counts``). The validation loader
always uses the references of the held-out split: its NLL is the paper's PLD estimate (eq. 4.2).

Data order is a seeded permutation per epoch, sharded over ranks (see :class:`EpochSampler`). Training
batches carry the completion-token count of their optimiser step (:mod:`tms.data.windows`), which the
token-mean objective of the whole step needs (:func:`tms.objectives.nll.step_token_mean`).
The trainer must run with ``reload_dataloaders_every_n_epochs=1`` (fresh targets each epoch) and
``use_distributed_sampler=False`` (the sampler is already rank-aware).

``mode="prompts"`` (on-policy RL, :mod:`tms.methods.rl`) skips the targets: the training loader
yields batches of train-example indices ``{"index": LongTensor[P]}`` in the same seeded order,
each batch repeated ``batch_repeats`` times in a row (μ optimisation passes per rollout).
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tms.data.formatting import Collator, completion_ids, join_and_truncate, prompt_ids
from tms.data.position import LoaderPosition, ResumedDataLoader
from tms.data.sources import ReferenceSource, TargetSource
from tms.data.windows import WindowedDataLoader
from tms.data.tasks.base import Example, Task

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` seeded by ``(seed, epoch)``, strided over ranks.

    Each rank takes ``perm[rank::world_size]``; when ``n`` is not divisible by ``world_size`` the
    permutation is padded with its first indices (as ``DistributedSampler`` does) so that every
    rank runs the same number of steps. ``start`` skips the first indices (mid-epoch resume).
    """

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        self.n, self.seed, self.epoch, self.shuffle = n, int(seed), int(epoch), shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def indices(self) -> list[int]:
        perm = np.random.default_rng([self.seed, self.epoch, 0x5A3]).permutation(self.n) if self.shuffle else np.arange(self.n)
        per_rank = -(-self.n // self.world_size)
        total = per_rank * self.world_size
        perm = np.resize(perm, total)  # pads by cycling through the permutation
        return [int(i) for i in perm[self.rank::self.world_size]][self.start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())


class TokenizedPairs(Dataset):
    """``(input_ids, n_prompt)`` items built from prompt ids and completion ids."""

    def __init__(self, items: list[tuple[list[int], int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.items[i]


class IndexBatches(Dataset):
    """Pre-batched example indices (prompt-only mode): consecutive chunks of ``batch_size`` indices of
    ``order``, each chunk repeated ``repeats`` times in a row. Items are ``{"index": LongTensor[P]}``."""

    def __init__(self, order: Sequence[int], batch_size: int, repeats: int = 1) -> None:
        chunks = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
        self.batches = [c for c in chunks for _ in range(int(repeats))]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(self.batches[i], dtype=torch.long)}


class PostTrainDataModule(L.LightningDataModule):
    """Prompts of ``task`` with targets from ``source``; validation on the task's references.

    Args:
        task: the training task.
        source: the target source (bound here to the train examples and the buffer).
        batch_size: micro-batch size per device.
        max_length: prompt + completion tokens; longer completions are truncated from the right,
            examples whose completion would be empty are dropped with a warning.
        seed: drives the data order and the target draws.
        train_limit / val_limit: optional caps on the number of examples.
        buffer / T: the trajectory buffer and the number of SFT checkpoints, for buffer sources.
        num_workers: DataLoader workers (tokenisation is done up front, so 0 is usually best).
        mode: ``"pairs"`` (prompt + target batches, the default) or ``"prompts"`` (example-index
            batches for on-policy RL; no targets are drawn).
        batch_repeats: prompt mode only: how many consecutive steps see each index batch.
        packing: padding-free packed batches (:mod:`tms.data.packing`: each micro-batch one row, the same loss and
            gradients as the right-padded batch) for training and validation; False: right padding.
    """

    def __init__(self, task: Task, source: TargetSource | None = None, batch_size: int = 16, max_length: int = 512,
                 seed: int = 0, train_limit: int | None = None, val_limit: int | None = None, buffer=None,
                 T: int | None = None, num_workers: int = 0, val_batch_size: int | None = None,
                 mode: str = "pairs", batch_repeats: int = 1, packing: bool = False) -> None:
        super().__init__()
        if mode not in ("pairs", "prompts"):
            raise ValueError(f"PostTrainDataModule mode must be 'pairs' or 'prompts', got {mode!r}")
        if int(batch_repeats) < 1:
            raise ValueError(f"batch_repeats must be >= 1, got {batch_repeats}")
        self.mode, self.batch_repeats = mode, int(batch_repeats)
        self.task, self.source = task, source or ReferenceSource()
        self.batch_size, self.max_length, self.seed = int(batch_size), int(max_length), int(seed)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.train_limit, self.val_limit, self.buffer, self.T = train_limit, val_limit, buffer, T
        self.num_workers, self.packing = int(num_workers), bool(packing)
        self.tokenizer = None
        self.mixture_counts: dict[int, dict[str, int]] = {}
        self.dropped: dict[str, int] = {}
        self._completion_cache: dict[str, list[int]] = {}
        self._resume: LoaderPosition | None = None  # restored from a checkpoint, see tms.data.position

    # -- setup -------------------------------------------------------------------------------
    def connect(self, tokenizer) -> "PostTrainDataModule":
        """Attach the tokenizer (after construction, as litgpt does) and tokenise the prompts.

        Examples whose prompt leaves no room for a single completion token within ``max_length``
        are dropped here, with a warning (they would train on nothing); the epoch size is then
        the same for every epoch whatever targets are drawn.
        """
        self.tokenizer = tokenizer
        self.train_examples, self.train_prompts = self._fit_prompts(self.task.examples("train", self.train_limit), "train")
        self.val_examples, self.val_prompts = self._fit_prompts(self.task.examples("val", self.val_limit), "val")
        self.source.bind(self.train_examples, buffer=self.buffer, T=self.T)
        self.collator = Collator(tokenizer.pad_token_id, packed=self.packing)
        return self

    def _fit_prompts(self, examples: list[Example], split: str) -> tuple[list[Example], list[list[int]]]:
        if split == "train" and not examples:
            raise ValueError(f"task {self.task.name!r} has an empty train split")
        kept, prompts = [], []
        for e in examples:
            ids = prompt_ids(self.tokenizer, self.task.messages(e))
            if len(ids) < self.max_length:
                kept.append(e)
                prompts.append(ids)
        if len(kept) < len(examples):
            self.dropped[split] = len(examples) - len(kept)
            log.warning("%s: %d of %d examples dropped: the prompt fills max_length=%d", split,
                        len(examples) - len(kept), len(examples), self.max_length)
            if split == "train" and not kept:
                raise ValueError(f"data.max_length={self.max_length}: every train prompt is at least that long")
        return kept, prompts

    def _completion(self, text: str) -> list[int]:
        ids = self._completion_cache.get(text)
        if ids is None:
            ids = self._completion_cache[text] = completion_ids(self.tokenizer, text)
        return ids

    def _pairs(self, prompts: Sequence[list[int]], texts: Sequence[str]) -> list[tuple[list[int], int]]:
        """Join prompts and completions; never empty since every prompt left room for one token."""
        return [join_and_truncate(p, self._completion(t), self.max_length) for p, t in zip(prompts, texts)]

    # -- epochs ------------------------------------------------------------------------------
    def draw_epoch(self, epoch: int) -> list[tuple[list[int], int]]:
        """Fresh targets for ``epoch`` (recorded in :attr:`mixture_counts`), tokenised and joined."""
        texts, labels = self.source.draw(epoch, self.seed)
        self.mixture_counts[int(epoch)] = self.source.counts(labels)
        return self._pairs(self.train_prompts, texts)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        epoch = int(self.trainer.current_epoch) if getattr(self, "trainer", None) is not None else 0
        if self.mode == "prompts":
            return self.prompt_dataloader(epoch)
        items = self.draw_epoch(epoch)
        rank, world = self._rank_world()
        skip = self.resume_skip(epoch)
        sampler = EpochSampler(len(items), self.seed, epoch, shuffle=True, rank=rank, world_size=world,
                               start=skip * self.batch_size)
        return WindowedDataLoader(TokenizedPairs(items), batch_size=self.batch_size, sampler=sampler, skipped=skip,
                                  collate_fn=self.collator, num_workers=self.num_workers, drop_last=False,
                                  generator=self._loader_generator(epoch), accumulate=self._accumulate())

    def _accumulate(self) -> int:
        """The trainer's gradient accumulation (the micro-batches of one optimiser step); 1 without a trainer."""
        trainer = getattr(self, "trainer", None)
        return int(trainer.accumulate_grad_batches) if trainer is not None else 1

    def resume_skip(self, epoch: int) -> int:
        """Micro-batches of ``epoch`` that the restored checkpoint had trained on (0 when not resuming)."""
        pos = self._resume
        if pos is not None and epoch > pos.epoch:
            self._resume = pos = None  # the resumed epoch is over
        return pos.batches if pos is not None and pos.epoch == epoch else 0

    def _loader_generator(self, epoch: int) -> torch.Generator:
        """The loader's own generator (worker seeds), so that building a loader never draws from the
        global RNG that a resumed run restores (see :class:`tms.training.resume.RNGState`)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_examples:
            return []
        items = self._pairs(self.val_prompts, [e.reference for e in self.val_examples])
        rank, world = self._rank_world()
        sampler = EpochSampler(len(items), self.seed, 0, shuffle=False, rank=rank, world_size=world)
        return DataLoader(TokenizedPairs(items), batch_size=self.val_batch_size, sampler=sampler,
                          collate_fn=self.collator, num_workers=self.num_workers)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Micro-batches per epoch per rank (before gradient accumulation; × ``batch_repeats`` in prompt mode)."""
        per_rank = -(-len(self.train_examples) // world_size)
        return -(-per_rank // self.batch_size) * (self.batch_repeats if self.mode == "prompts" else 1)

    # -- prompt-only mode (on-policy RL) -----------------------------------------------------
    def prompt_dataloader(self, epoch: int) -> DataLoader:
        """Index batches over :attr:`train_examples` (and :attr:`train_prompts`) for ``epoch``: the
        :class:`EpochSampler` order of this rank, chunked into ``batch_size`` and repeated ``batch_repeats``
        times. Nothing is drawn from the target source."""
        rank, world = self._rank_world()
        order = EpochSampler(len(self.train_examples), self.seed, epoch, shuffle=True, rank=rank, world_size=world).indices()
        batches, skip = IndexBatches(order, self.batch_size, self.batch_repeats), self.resume_skip(epoch)
        return ResumedDataLoader(batches, batch_size=None, sampler=range(skip, len(batches)), skipped=skip,
                                 num_workers=self.num_workers, generator=self._loader_generator(epoch))

    def state_dict(self) -> dict:
        """Mixture counts and the data position (saved in Lightning checkpoints, see :mod:`tms.data.position`)."""
        return {"mixture_counts": {str(k): v for k, v in self.mixture_counts.items()},
                "position": LoaderPosition.of(getattr(self, "trainer", None)).to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.mixture_counts = {int(k): v for k, v in state.get("mixture_counts", {}).items()}
        self._resume = LoaderPosition.from_dict(state.get("position"))
