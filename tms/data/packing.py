r"""Padding-free packed batches: the sequences of a micro-batch laid end to end in one row.

A packed batch of sequences :math:`s_1..s_B` of lengths :math:`\ell_1..\ell_B` holds

* ``input_ids`` / ``labels`` ``[1, N]``, :math:`N = \sum_b \ell_b` (no padding token at all),
* ``position_ids`` ``[1, N]``: ``0..ℓ_b-1`` for each sequence (positions restart at every boundary),
* ``cu_seq_lens`` ``[B+1]`` (int32): the cumulative lengths :math:`0, \ell_1, \ell_1+\ell_2, \dots, N` — the
  boundaries flash-attention's varlen kernels take — and ``max_length`` (:math:`\max_b \ell_b`),
* ``attention_mask`` ``[1, N]`` of ones: it only counts tokens (the model is called without it: attention stays
  within each sequence through ``cu_seq_lens``, :mod:`tms.models.varlen`).

The label of the first token of every sequence is ``IGNORE_INDEX`` (it is a prompt token anyway), so the
prediction made at the last token of :math:`s_b` — of the first token of :math:`s_{b+1}` — is never scored:
together with attention that never crosses a boundary, every labelled token gets exactly the log-probability it
gets in the right-padded batch of the same sequences (:func:`tms.data.formatting.collate_right_padded`), and the
summed NLL and its gradient are the same (tested).
"""
from __future__ import annotations

import torch

from tms.objectives.nll import IGNORE_INDEX

#: the keys a packed batch adds to a padded one (what the model's forward receives besides input_ids)
PACKED_KEYS = ("position_ids", "cu_seq_lens", "max_length")


def collate_packed(items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    """One packed row of ``(input_ids, n_prompt)`` items (see the module docstring)."""
    if not items:
        raise ValueError("collate_packed: an empty batch")
    ids = torch.tensor([t for seq, _ in items for t in seq], dtype=torch.long)
    lengths = torch.tensor([len(seq) for seq, _ in items], dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(len(ids)) - torch.repeat_interleave(starts, lengths)
    prompt = torch.tensor([max(1, n) for _, n in items], dtype=torch.long)  # the first token is never a target
    labels = ids.masked_fill(position < torch.repeat_interleave(prompt, lengths), IGNORE_INDEX)
    cu = torch.zeros(len(items) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return {"input_ids": ids[None], "labels": labels[None], "position_ids": position[None],
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long), "cu_seq_lens": cu,
            "max_length": torch.tensor(int(lengths.max()))}


def is_packed(batch: dict) -> bool:
    """Whether ``batch`` came from :func:`collate_packed`."""
    return "cu_seq_lens" in batch


def sequences_in(batch: dict) -> int:
    """The number of sequences (examples) of a padded or packed batch."""
    return int(batch["cu_seq_lens"].numel() - 1) if is_packed(batch) else int(batch["input_ids"].shape[0])
