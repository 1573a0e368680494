r"""Attention over packed sequences (:mod:`tms.data.packing`) that never crosses a sequence boundary.

A packed row holds sequences :math:`s_1..s_B` end to end, with boundaries ``cu_seq_lens``
:math:`0 = c_0 < c_1 < \dots < c_B = N`. The attention of a query at packed position :math:`c_b + i` is

.. math::  \operatorname{softmax}\Big(\frac{q_{c_b+i}\, K_{c_b..c_b+i}^\top}{\sqrt d}\Big) V_{c_b..c_b+i}

(causal within :math:`s_b`, nothing from another sequence): exactly the attention of position ``i`` of
:math:`s_b` alone. Everything else in a decoder layer (projections, MLP, norms, the LM head) is per token, so a
packed forward computes the same hidden states as the padded batch while spending no compute on padding.

* Models loaded with ``flash_attention_2/3`` get the boundaries as the ``cu_seq_lens_q/k`` / ``max_length_q/k``
  keyword arguments transformers passes to its varlen kernels.
* Every other model (``sdpa``, ``eager``: the CPU and the default GPU path) runs, for the packed forward only, the
  attention function :func:`varlen_sdpa` registered with transformers' ``AttentionInterface`` as
  :data:`IMPLEMENTATION`: it gathers the packed queries, keys and values into a right-padded
  ``[B, H, max_length, d]`` layout, runs causal ``scaled_dot_product_attention`` and scatters the valid positions
  back (with right padding and a causal mask a real query never sees a padded key) — the attention's own cost is
  that of the padded batch, the rest of the model runs on the :math:`N` real tokens only.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

IMPLEMENTATION = "tms_varlen_sdpa"
NATIVE_VARLEN = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def varlen_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask=None,
                dropout: float = 0.0, scaling: float | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                max_length_q: int | torch.Tensor | None = None, sliding_window: int | None = None,
                softcap: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence: ``query`` ``[1, Hq, N, d]``, ``key``/``value`` ``[1, Hkv, N, d]``
    (grouped-query heads allowed) → ``[1, N, Hq, d]`` (transformers' attention-function contract)."""
    if cu_seq_lens_q is None:
        raise ValueError(f"attention {IMPLEMENTATION!r} runs packed batches only (no cu_seq_lens_q given)")
    if sliding_window is not None or softcap is not None:
        raise NotImplementedError(f"{IMPLEMENTATION}: sliding-window / soft-capped attention is not supported; "
                                  "train this model with sft.packing=false")
    if query.shape[0] != 1:
        raise ValueError(f"{IMPLEMENTATION}: a packed batch is one row, got {query.shape[0]}")
    n = query.shape[2]
    cu = cu_seq_lens_q.to(device=query.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    width = int(max_length_q) if max_length_q is not None else int(lengths.max())
    offsets = torch.arange(width, device=query.device)
    valid = (offsets[None] < lengths[:, None]).reshape(-1)          # [B*W]
    index = (cu[:-1, None] + offsets[None]).clamp(max=n - 1).reshape(-1)  # packed position of (sequence, offset)
    b = lengths.numel()

    def padded(x: torch.Tensor) -> torch.Tensor:                    # [1, H, N, d] -> [B, H, W, d]
        return x[0].index_select(1, index).unflatten(1, (b, width)).transpose(0, 1)

    q, k, v = padded(query), padded(key), padded(value)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                         enable_gqa=q.shape[1] != k.shape[1])
    rows = valid.nonzero().squeeze(1)                               # the B*W slots that hold a real position
    return out.transpose(1, 2).reshape(b * width, *out.shape[1:2], out.shape[-1]).index_select(0, rows)[None], None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, varlen_sdpa)  # no mask function: transformers then builds no mask


def packed_kwargs(cu_seq_lens: torch.Tensor, max_length: int | torch.Tensor) -> dict:
    """The model-forward keyword arguments that carry the sequence boundaries (transformers' varlen names)."""
    width = int(max_length)
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": width, "max_length_k": width}


@contextmanager
def packed_attention(model) -> Iterator[None]:
    """Within the block ``model`` attends within packed sequences: flash models as they are (native varlen), any
    other model through :func:`varlen_sdpa` (its attention implementation is switched back on exit)."""
    config = model.config
    current = config._attn_implementation
    if current in NATIVE_VARLEN:
        yield
        return
    _register()
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = current
