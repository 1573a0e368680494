"""Learning-rate schedules, used as ``_partial_`` Hydra targets: ``scheduler(optimizer, total_steps=N)``."""
from __future__ import annotations

import math

import torch


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.03,
                       min_lr_ratio: float = 0.0, warmup_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    r"""Linear warmup then cosine decay, stepped once per optimiser step.

    With :math:`W = \lceil r N \rceil` warmup steps (r = ``warmup_ratio``, N = ``total_steps``) the
    multiplier of the base lr at step s is

    .. math:: \lambda(s) = \frac{s+1}{W} \; (s < W), \qquad
              \lambda(s) = m + (1-m)\,\tfrac12\bigl(1+\cos(\pi \tfrac{s-W}{\max(1, N-W)})\bigr) \; (s \ge W)

    with m = ``min_lr_ratio``. The paper uses a cosine schedule with 3% warmup.
    """
    if total_steps < 1:
        raise ValueError(f"cosine_with_warmup: total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    W = int(warmup_steps) if warmup_steps is not None else math.ceil(round(warmup_ratio * total_steps, 9))  # 0.07·100 is 7.000000000000001 in floats

    def factor(step: int) -> float:
        if step < W:
            return (step + 1) / W
        progress = min(1.0, (step - W) / max(1, total_steps - W))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
