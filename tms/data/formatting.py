"""Chat formatting and prompt masking.

A training sequence is ``prompt_ids + completion_ids`` where

* ``prompt_ids`` is the chat template applied to the prompt messages with the generation prompt
  (exactly what generation is conditioned on), and
* ``completion_ids`` is the target text tokenised on its own followed by the tokenizer's eos
  token (the end-of-turn token of instruct models: ``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``),

so the tokens the model is trained to produce are exactly the tokens generation would emit.
Labels are ``-100`` on the prompt and on padding, so the loss covers completion tokens only.
"""
from __future__ import annotations

from typing import Sequence

import torch

from tms.data.packing import collate_packed
from tms.objectives.nll import IGNORE_INDEX


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat-formatted prompt, ending with the assistant generation prompt."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # some transformers versions return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def completion_ids(tokenizer, text: str, add_eos: bool = True) -> list[int]:
    """Token ids of a completion (no special tokens) followed by eos."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids] + ([int(tokenizer.eos_token_id)] if add_eos else [])


def join_and_truncate(prompt: Sequence[int], completion: Sequence[int], max_length: int) -> tuple[list[int], int] | None:
    """``(input_ids, n_prompt)`` truncated to ``max_length`` from the right of the completion.

    Returns None when not a single completion token fits (the prompt alone fills the context):
    such an example would contribute no loss and must be dropped, not trained on silently.
    """
    n_prompt = len(prompt)
    keep = max_length - n_prompt
    if keep < 1 or len(completion) == 0:
        return None
    return list(prompt) + list(completion[:keep]), n_prompt


def collate_right_padded(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic right padding of ``(input_ids, n_prompt)`` items to the longest in the batch.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` ([B, L]); padding has label -100 and
    attention 0. Right padding keeps position ids 0..n-1 for every sequence.
    """
    width = max(len(ids) for ids, _ in items)
    batch = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(items):
        n = len(ids)
        batch[row, :n] = torch.tensor(ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, n_prompt:n] = batch[row, n_prompt:n]
    return {"input_ids": batch, "attention_mask": mask, "labels": labels}


class Collator:
    """Picklable collate function (needed by spawn-based data-loader workers and ``ddp_spawn``): right-padded
    batches, or with ``packed`` padding-free packed rows (:func:`tms.data.packing.collate_packed`)."""

    def __init__(self, pad_id: int, packed: bool = False) -> None:
        self.pad_id, self.packed = int(pad_id), bool(packed)

    def __call__(self, items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        return collate_packed(items) if self.packed else collate_right_padded(items, self.pad_id)
