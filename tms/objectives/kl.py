"""Per-token KL estimators (Schulman 2020), shared by the RL loss (the k3 penalty) and the evaluation (KL-to-base).

Every estimator takes the token log-ratio ℓ = log π_θ(y) − log π_ref(y) at tokens y ~ π_θ and returns a per-token
estimate whose expectation under π_θ is (k1, k3) or approximates (k2) KL(π_θ ‖ π_ref); each is 0 at ℓ = 0.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    r"""k1 per-token KL estimator (Schulman, "Approximating KL divergence", 2020).

    Convention for all three estimators: ``log_ratio`` :math:`= \ell = \log \pi_\theta(y) - \log \pi_{ref}(y)`
    evaluated at tokens :math:`y \sim \pi_\theta`. Then :math:`k_1 = \ell` and
    :math:`\mathbb{E}_{y \sim \pi_\theta}[k_1] = \mathrm{KL}(\pi_\theta \| \pi_{ref})`: unbiased, but high
    variance and negative on individual samples.
    """
    return log_ratio


def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    r""":math:`k_2 = \tfrac12 \ell^2 \ge 0` (convention of :func:`kl_k1`).

    Biased: :math:`\mathbb{E}_{\pi_\theta}[k_2] = \tfrac12 \mathbb{E}_{\pi_\theta}[\ell^2]`, which matches
    :math:`\mathrm{KL}(\pi_\theta \| \pi_{ref})` to second order when the two distributions are close,
    with lower variance than k1.
    """
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    r"""k3 per-token KL estimator (convention of :func:`kl_k1`).

    .. math::  k_3 = (r - 1) - \log r, \qquad r = \frac{\pi_{ref}(y)}{\pi_\theta(y)} = e^{-\ell}

    computed as ``expm1(-log_ratio) + log_ratio``. Unbiased, since :math:`\mathbb{E}_{\pi_\theta}[r] = 1`
    (when supp :math:`\pi_{ref} \subseteq` supp :math:`\pi_\theta`), and :math:`\ge 0` elementwise because
    :math:`e^u \ge 1 + u`; the clamp only removes float rounding below 0. Summed over a sequence's tokens it
    is also unbiased for the sequence-level KL (chain rule).
    """
    return (torch.expm1(-log_ratio) + log_ratio).clamp_min(0.0)


ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimator(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got estimator={name!r}")
    return ESTIMATORS[name]
