"""Pure tensor functions for the policy-gradient methods (GRPO, REINFORCE).

Conventions follow :mod:`tms.objectives.nll`: per-token tensors are ``[B, T]`` as returned by
:func:`tms.objectives.nll.token_logprobs` (``T = L - 1``) with a boolean ``mask`` marking completion tokens;
``advantages`` are per sequence, ``[B]``, and are broadcast over that sequence's completion tokens.
Old-policy and reference log-probabilities and the advantages are treated as constants (detached).
Every reduction over tokens ignores masked positions, whatever values they hold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tms.objectives.kl import kl_k3
from tms.objectives.nll import IGNORE_INDEX, shift_for_next_token

AGGREGATIONS = ("token_mean", "sequence_mean")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """View ``[P * G]`` or ``[P, G]`` rewards as float ``[P, G]``; reject shapes that do not fit."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if rewards.dim() == 2 and rewards.shape[1] != group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not have group_size={group_size} columns")
    if rewards.dim() not in (1, 2) or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} cannot be split into groups of {group_size}")
    return rewards.float().reshape(-1, group_size)


def _zero_constant_groups(grouped: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Set the advantages of groups whose rewards are all equal to exactly 0 (the mean of equal floats
    need not equal them bit for bit, and dividing that residue by ``std + eps`` would not give 0)."""
    constant = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)
    return advantages.masked_fill(constant, 0.0)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    r"""GRPO group-relative advantages (DeepSeekMath, outcome supervision).

    .. math::  A_i = \frac{r_i - \operatorname{mean}_{j \in g(i)} r_j}{\operatorname{std}_{j \in g(i)} r_j + \epsilon}

    with ``std`` the *unbiased* (Bessel-corrected, divisor ``G - 1``) group standard deviation, as TRL's
    ``GRPOTrainer`` computes it (``rewards.view(-1, G).std(dim=1)``, torch's default ``correction=1``,
    and the same ``eps = 1e-4`` added to the std). ``scale=False`` gives Dr. GRPO's :math:`A_i = r_i - \bar r`.
    Groups are consecutive runs of ``group_size`` entries of ``rewards`` (``[P * G]`` or ``[P, G]``);
    the result has the shape of ``rewards``. A group whose rewards are all equal gets exactly 0.
    """
    grouped = _grouped(rewards, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return _zero_constant_groups(grouped, advantages).reshape(rewards.shape)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    r"""RLOO advantages: each reward minus the mean of the other ``G - 1`` rewards of its group.

    .. math::  A_i = r_i - \frac{1}{G - 1} \sum_{j \in g(i), j \ne i} r_j = \frac{G}{G - 1} (r_i - \bar r)

    Same grouping and output shape as :func:`group_advantages`; equal-reward groups get exactly 0.
    """
    grouped = _grouped(rewards, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return _zero_constant_groups(grouped, grouped - others).reshape(rewards.shape)


def ema_update(
    baseline: torch.Tensor | float | None, batch_mean_reward: torch.Tensor | float, momentum: float
) -> torch.Tensor | float:
    r"""One step of REINFORCE's moving-average baseline.

    .. math::  b' = m \, b + (1 - m) \, \bar r_{\text{batch}}, \qquad
               b' = \bar r_{\text{batch}} \text{ when } b \text{ is None}

    The first update initialises the baseline with the first batch mean (rather than 0, which would
    leave the first ~1/(1-m) steps with an un-centred reward). Intended use, one code path for every step::

        b = ema_update(b, rewards.mean(), momentum)
        advantages = reinforce_advantages(rewards, b)

    so the baseline a batch is centred with includes that batch with weight ``1 - m`` (exactly its own
    mean on the first step).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if baseline is None:
        return batch_mean_reward
    return momentum * baseline + (1.0 - momentum) * batch_mean_reward


def reinforce_advantages(rewards: torch.Tensor, baseline: torch.Tensor | float) -> torch.Tensor:
    r"""REINFORCE advantages with a scalar baseline: :math:`A_i = r_i - b`."""
    return rewards.float() - baseline


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    r"""Reduce a ``[B, T]`` per-token quantity over the completion tokens to a scalar.

    ``token_mean``:  :math:`\frac{\sum_{b,t} m_{bt} x_{bt}}{\sum_{b,t} m_{bt}}` (every token weighs the same);
    ``sequence_mean``:  :math:`\frac{1}{|S|} \sum_{b \in S} \frac{\sum_t m_{bt} x_{bt}}{\sum_t m_{bt}}` over the set
    :math:`S` of sequences with at least one completion token (GRPO's original :math:`1/|o_i|` normalisation).
    Raises ``ValueError`` for an unknown ``mode`` or a batch without any completion token.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; expected one of {AGGREGATIONS}")
    mask = mask.bool()
    if not bool(mask.any()):
        raise ValueError("aggregate: the batch has no completion token (mask is all false)")
    masked = per_token.masked_fill(~mask, 0.0)
    if mode == "token_mean":
        return masked.sum() / mask.sum()
    lengths = mask.sum(dim=1)
    nonempty = lengths > 0
    return (masked.sum(dim=1)[nonempty] / lengths[nonempty]).mean()


def _check_per_token(advantages: torch.Tensor, mask: torch.Tensor, *per_token: torch.Tensor) -> None:
    for t in per_token:
        if t.shape != mask.shape:
            raise ValueError(f"per-token tensor of shape {tuple(t.shape)} does not match mask {tuple(mask.shape)}")
    if advantages.shape != mask.shape[:1]:
        expected = tuple(mask.shape[:1])
        raise ValueError(f"advantages must be per sequence, shape {expected}, got {tuple(advantages.shape)}")


def _clipped_objective(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate ``[B, T]`` and its stats; the ratio is 1 at masked positions, which
    ``aggregate`` ignores anyway, so garbage there cannot overflow into NaN gradients."""
    _check_per_token(advantages, mask, logp_new, logp_old)
    mask = mask.bool()
    high = epsilon_low if epsilon_high is None else epsilon_high
    log_ratio = (logp_new - logp_old.detach()).masked_fill(~mask, 0.0)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().float().unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + high) * adv
    objective = torch.minimum(unclipped, clipped)
    stats = {
        "clip_fraction": aggregate((clipped < unclipped).float(), mask, "token_mean").detach(),
        "ratio_mean": aggregate(ratio, mask, "token_mean").detach(),
    }
    return objective, stats


def clipped_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""PPO/GRPO clipped surrogate loss.

    .. math::  \rho_{bt} = e^{\log\pi_\theta(y_{bt}) - \log\pi_{\text{old}}(y_{bt})}, \qquad
               J_{bt} = \min\big(\rho_{bt} A_b,\
                   \operatorname{clip}(\rho_{bt}, 1 - \epsilon_{\text{low}}, 1 + \epsilon_{\text{high}}) A_b\big)

    and ``loss = aggregate(-J, mask, aggregation)``. ``epsilon_high=None`` means ``epsilon_low``
    (symmetric PPO clip; a larger value is DAPO's clip-higher). Returns ``(loss, stats)`` with
    ``stats["clip_fraction"]``: fraction of completion tokens where the clipped term is the active minimum
    and strictly below the unclipped one (:math:`A>0, \rho>1+\epsilon_{\text{high}}` or
    :math:`A<0, \rho<1-\epsilon_{\text{low}}`), and ``stats["ratio_mean"]``: token mean of :math:`\rho`.
    Both are detached.
    """
    objective, stats = _clipped_objective(logp_new, logp_old, advantages, mask, epsilon_low, epsilon_high)
    return aggregate(-objective, mask, aggregation), stats


def kl_penalty_k3(logp_new: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-token k3 estimator of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{\text{ref}})` (DeepSeekMath eq. 4).

    .. math::  k_3 = e^{\log\pi_{\text{ref}} - \log\pi_\theta} - (\log\pi_{\text{ref}} - \log\pi_\theta) - 1 \;\ge 0

    Unbiased for the KL when :math:`y \sim \pi_\theta`. Returns ``[B, T]``, 0 at masked positions.
    """
    if logp_new.shape != mask.shape or logp_ref.shape != mask.shape:
        shapes = f"logp_new {tuple(logp_new.shape)}, logp_ref {tuple(logp_ref.shape)}, mask {tuple(mask.shape)}"
        raise ValueError(f"kl_penalty_k3: shapes differ: {shapes}")
    log_ratio = (logp_new - logp_ref.detach()).masked_fill(~mask.bool(), 0.0)
    return kl_k3(log_ratio)  # the evaluation's estimator: one definition of k3


def grpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    aggregation: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""GRPO loss: clipped surrogate plus a per-token k3 KL penalty to the reference policy.

    .. math::  \ell_{bt} = -J_{bt} + \beta \, k_3(\pi_\theta, \pi_{\text{ref}})_{bt}, \qquad
               \mathcal{L} = \operatorname{aggregate}(\ell, m, \text{aggregation})

    with :math:`J` as in :func:`clipped_policy_loss`. The KL term (and ``stats["kl"]``, its token mean) is
    computed only when ``beta > 0`` and ``logp_ref`` is given; ``beta > 0`` without ``logp_ref`` raises.
    ``aggregation="sequence_mean"`` reproduces DeepSeekMath eq. 3. Stats as in :func:`clipped_policy_loss`.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and logp_ref is None:
        raise ValueError("grpo_loss: beta > 0 needs logp_ref (reference-policy log-probabilities)")
    objective, stats = _clipped_objective(logp_new, logp_old, advantages, mask, epsilon_low, epsilon_high)
    per_token = -objective
    if beta > 0:
        kl = kl_penalty_k3(logp_new, logp_ref, mask)
        per_token = per_token + beta * kl
        stats["kl"] = aggregate(kl, mask, "token_mean").detach()
    return aggregate(per_token, mask, aggregation), stats


def masked_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Mean per-token entropy of the policy over the completion tokens.

    .. math::  \bar H = \frac{1}{\sum m} \sum_{b,i:\, m_{bi}} -\sum_v p_{bi}(v) \log p_{bi}(v),
               \qquad \log p_{bi} = \operatorname{log\_softmax}(\text{logits}_{b,i})

    over the positions predicting a labelled token (same alignment as :func:`tms.objectives.nll.token_logprobs`).
    Only those rows are materialised in float32; ``-inf`` logits contribute 0. Pass logits already divided
    by the sampling temperature if the entropy of the sampling distribution is wanted.
    """
    logits, targets = shift_for_next_token(logits, labels)
    mask = targets != IGNORE_INDEX
    if not bool(mask.any()):
        raise ValueError("masked_entropy: the batch has no completion token (all labels are -100)")
    logp = F.log_softmax(logits[mask].float(), dim=-1)
    finite_logp = logp.clamp(min=torch.finfo(logp.dtype).min)
    return -(logp.exp() * finite_logp).sum(dim=-1).mean()
