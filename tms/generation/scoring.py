r"""Teacher-forced scoring: per-token :math:`\log\pi(y_i \mid x, y_{<i})` of given completions.

Used for KL-to-base (score π_θ's samples under π_θ and π_0), held-out NLL (PLD) and the
``logprobs`` option of every generation backend, so all of them share one definition: the
unmodified model distribution (temperature 1, no top-p/top-k).
"""
from __future__ import annotations

from typing import Sequence

import torch

from tms.data.formatting import collate_right_padded
from tms.objectives.head_logprobs import model_token_logprobs


@torch.no_grad()
def score_completions(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
                      batch_size: int = 32, logprob_chunk: int | None = None) -> list[list[float]]:
    """Per-token log-probs of each completion given its prompt (ragged list, one float per token).

    ``logprob_chunk``: memory-bounded log-probs through the LM head (:mod:`tms.objectives.head_logprobs`); None: full logits."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[float]] = [[] for _ in completions]
    order = sorted(range(len(completions)), key=lambda i: -(len(prompts[i]) + len(completions[i])))
    for start in range(0, len(order), batch_size):
        chunk = [i for i in order[start:start + batch_size] if len(completions[i]) > 0]
        if not chunk:
            continue
        batch = collate_right_padded([(list(prompts[i]) + list(completions[i]), len(prompts[i])) for i in chunk], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logp, mask, _ = model_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                             chunk=logprob_chunk)
        for row, i in enumerate(chunk):
            out[i] = logp[row][mask[row]].float().cpu().tolist()
    model.train(was_training)
    return out
