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


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or as it is when it is already float64 (low-precision logits are upcast for the loss)."""
    return x if x.dtype == torch.float64 else x.float()


def completion_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L-1]`` boolean mask of the predicted positions whose target is a completion token."""
    return labels[:, 1:] != IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labelled tokens.

    Returns ``(logp, mask)``, both ``[B, L-1]``: ``logp[b, i] = log softmax(logits[b, i])[labels[b, i+1]]``
    where ``mask[b, i]`` is true, and 0 elsewhere; in float32 (float64 for float64 logits).
    """
    logits, targets = shift_for_next_token(logits, labels)
    mask = completion_mask(labels)
    safe = targets.masked_fill(~mask, 0)
    logp = -F.cross_entropy(at_least_float32(logits).transpose(1, 2), safe, reduction="none")
    return logp.masked_fill(~mask, 0.0), mask


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Token-level negative log-likelihood of the completion tokens of one batch.

    .. math::  \mathcal{L} = -\frac{1}{\sum_{b,i} m_{b,i}} \sum_{b,i} m_{b,i} \log \pi_\theta(y_{b,i} \mid x_b, y_{b,<i})

    averaged over all unmasked tokens of the batch. Returns ``(loss, n_tokens)``. Raises if the batch
    holds no completion token, so that a fully truncated batch can never give a silent 0 (or NaN) loss.
    Training does not use it per micro-batch (that would weigh the tokens of short micro-batches more):
    see :func:`masked_nll_sum` and :func:`step_token_mean`.
    """
    total, n = masked_nll_sum(logits, labels)
    if int(n) == 0:
        raise ValueError("masked_nll: the batch has no completion token (all labels are -100)")
    return total / n, n


def masked_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Summed NLL of the completion tokens, :math:`S = -\sum_{b,i} m_{b,i} \log \pi_\theta(y_{b,i} \mid x_b, y_{b,<i})`,
    and their count :math:`n = \sum_{b,i} m_{b,i}`. Returns ``(S, n)``."""
    logp, mask = token_logprobs(logits, labels)
    return -logp.sum(), mask.sum()


def step_token_mean(nll_sum: torch.Tensor, step_tokens: torch.Tensor | int, accumulate: int,
                    world_size: int) -> torch.Tensor:
    r"""What one micro-batch returns so that the optimiser step minimises the token mean of the whole step.

    The objective of one optimiser step (eq. 3.1 with the token-mean reduction) is

    .. math::  \mathcal{L}_{\text{step}} = \frac{1}{N} \sum_{r=1}^{W} \sum_{m=1}^{A} S_{r,m},
               \qquad N = \sum_{r,m} n_{r,m}

    over the ``A`` micro-batches (gradient accumulation) of each of the ``W`` ranks, with :math:`S_{r,m}` the
    summed token NLL of micro-batch ``m`` on rank ``r`` (:func:`masked_nll_sum`) and ``N`` the completion
    tokens of the whole step (``step_tokens``: summed over the window and all-reduced over ranks). Lightning
    divides what ``training_step`` returns by ``A`` (also in a shorter last window of an epoch) and
    data-parallel strategies (DDP, FSDP, FSDP2) average gradients over the ``W`` ranks, so each micro-batch
    returns :math:`S_{r,m} \cdot A W / N`; the accumulated, averaged gradient is then exactly
    :math:`\nabla \mathcal{L}_{\text{step}}`, whatever the split into micro-batches and ranks
    (torchtune's ``full_finetune_distributed`` recipe normalises the same way).
    """
    n = step_tokens if isinstance(step_tokens, torch.Tensor) else torch.tensor(step_tokens)
    if int(n) <= 0:
        raise ValueError("step_token_mean: the optimiser step has no completion token (all labels are -100)")
    return nll_sum * (float(accumulate) * float(world_size)) / n.to(nll_sum.dtype)
