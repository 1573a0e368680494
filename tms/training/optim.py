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


#: optimisers whose fused kernel computes the same update as their per-tensor loop (one kernel for every parameter)
FUSABLE = (torch.optim.AdamW, torch.optim.Adam)


def build_optimizer(factory, params: list[torch.nn.Parameter], fuse: bool = True) -> torch.optim.Optimizer:
    """``factory(params)``, with torch's fused kernel for Adam / AdamW where nothing in the config chose an
    implementation (neither ``fused`` nor ``foreach`` given) and every parameter is a plain CPU or CUDA floating
    tensor — what Hugging Face ``Trainer`` does by default (``adamw_torch_fused``). The same update as the loop,
    other float rounding; ≈ 5× faster steps on the CPU (bench/sft_throughput.py). Sharded ``DTensor`` parameters
    (FSDP2) and other devices keep torch's default, and so does ``fuse=False``: ``model.fused_optimizer: false`` (the
    toy), or an fp16 grad scaler (Lightning must unscale the gradients before clipping them, which a fused optimiser
    does inside its step)."""
    func = getattr(factory, "func", None)
    chosen = {"fused", "foreach"} & set(getattr(factory, "keywords", {}) or {})
    plain = bool(params) and all(type(p.data) is torch.Tensor and p.is_floating_point() for p in params)
    devices = {p.device.type for p in params}
    if fuse and func in FUSABLE and not chosen and plain and len(devices) == 1 and devices <= {"cpu", "cuda"}:
        return factory(params, fused=True)
    return factory(params)
