"""Pure tensor functions for the training objectives.

Conventions: ``logits`` are ``[B, L, V]`` as returned by a causal LM for ``input_ids`` ``[B, L]``;
``labels`` are ``[B, L]`` aligned with ``input_ids`` and equal to ``IGNORE_INDEX`` (-100) on
prompt and padding positions. Position ``i`` of ``logits`` predicts token ``i + 1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: drop the last logit and the first label."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labelled tokens.

    Returns ``(logp, mask)``, both ``[B, L-1]``: ``logp[b, i] = log softmax(logits[b, i])[labels[b, i+1]]``
    where ``mask[b, i]`` is true, and 0 elsewhere.
    """
    logits, targets = shift_for_next_token(logits, labels)
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    logp = -F.cross_entropy(logits.float().transpose(1, 2), safe, reduction="none")
    return logp.masked_fill(~mask, 0.0), mask


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Token-level negative log-likelihood of the completion tokens.

    .. math::  \mathcal{L} = -\frac{1}{\sum_{b,i} m_{b,i}} \sum_{b,i} m_{b,i} \log \pi_\theta(y_{b,i} \mid x_b, y_{b,<i})

    averaged over all unmasked tokens of the batch (eq. 3.1 with the token-mean reduction).
    Returns ``(loss, n_tokens)``. Raises if the batch holds no completion token, so that a fully
    truncated batch can never give a silent 0 (or NaN) loss.
    """
    logp, mask = token_logprobs(logits, labels)
    n = mask.sum()
    if int(n) == 0:
        raise ValueError("masked_nll: the batch has no completion token (all labels are -100)")
    return -logp.sum() / n, n


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence :math:`\log \pi(y \mid x) = \sum_i \log \pi(y_i \mid x, y_{<i})`, shape ``[B]``."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(dim=1)
