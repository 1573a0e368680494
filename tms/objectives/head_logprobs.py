r"""Memory-bounded per-token log-probabilities straight from the final hidden states and the LM head.

:func:`tms.objectives.nll.token_logprobs` needs the model's ``[B, L, V]`` logits, which it upcasts to float32: at
paper scale (64 sequences × 1.2K tokens × a 152K vocabulary) that is tens of GB for one micro-batch, twice over
with the entropy. Here only the positions that predict a labelled token are projected, ``chunk`` of them at a
time, and each chunk runs under activation checkpointing (its logits are recomputed in backward instead of being
kept), so the peak is ``chunk × V`` float32 values whatever the micro-batch:

.. math::  \log\pi(y_{b,i+1} \mid \cdot) = z_{b,i}[y_{b,i+1}] - \log\textstyle\sum_v e^{z_{b,i}[v]},
           \qquad z_{b,i} = (W h_{b,i} + c) / \tau

with :math:`h_{b,i}` the final hidden state at position ``i``, :math:`W, c` the LM head and :math:`\tau` the
temperature: the same values and gradients as ``token_logprobs(logits / τ, labels)`` (tested in float64), and
the same alignment (position ``i`` predicts token ``i + 1``; ``IGNORE_INDEX`` labels are masked).
:func:`lm_head_logprobs` makes an HF causal LM return these instead of its logits, inside the model's own
forward, so that sharded strategies (FSDP, FSDP2) gather the head's weight as they do for its logits.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tms.objectives.nll import at_least_float32, completion_mask, token_logprobs
from tms.objectives.policy_gradient import masked_entropy

# HF config keys of a post-head transform of the logits (Gemma 2's soft-capping): the head alone is then not the
# model's distribution, and the chunked path is refused
POST_HEAD_KEYS = ("final_logit_softcapping",)


def _chunk_logp(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                temperature: float) -> torch.Tensor:
    z = at_least_float32(F.linear(h, weight, bias)) / temperature
    return -F.cross_entropy(z, targets, reduction="none")


@torch.no_grad()
def _chunk_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    logp = F.log_softmax(at_least_float32(F.linear(h, weight, bias)) / temperature, dim=-1)
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(dim=-1)


def liger_logp(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
               temperature: float) -> torch.Tensor:
    r"""``[N]`` log-probs through Liger's fused linear cross-entropy (``reduction="none"``: per token, differentiable;
    Triton kernels, CUDA only): :math:`z/\tau = W (h/\tau) + c/\tau`."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    scaled_bias = bias / temperature if bias is not None else None
    return -liger_fused_linear_cross_entropy(rows / temperature, weight, targets, scaled_bias, reduction="none")


IMPLS = ("chunked", "liger")


def hidden_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          bias: torch.Tensor | None = None, temperature: float = 1.0, chunk: int = 1024,
                          entropy: bool = False, impl: str = "chunked",
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the labelled tokens from ``hidden`` ``[B, L, H]`` and the head ``weight`` ``[V, H]``.

    Returns ``(logp, mask, entropy)``: ``logp`` and ``mask`` ``[B, L-1]`` as :func:`~tms.objectives.nll.token_logprobs`
    returns them (0 where masked; float32, float64 for float64 weights), and with ``entropy=True`` the ``[B, L-1]``
    per-token entropy of the (temperature-scaled) distribution at the labelled positions (no gradient), else None.
    ``impl``: ``chunked`` (here, checkpointed chunks of ``chunk`` rows) or ``liger`` (:func:`liger_logp`; the entropy,
    when asked for, still comes from chunks here).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    mask = completion_mask(labels)
    rows = hidden[:, :-1][mask]                     # [N, H]: only the positions that predict a labelled token
    targets = labels[:, 1:][mask]
    out_dtype = torch.float64 if weight.dtype == torch.float64 or hidden.dtype == torch.float64 else torch.float32

    def spread(flat: torch.Tensor) -> torch.Tensor:  # [N] values back to [B, L-1], 0 off the mask
        return torch.zeros(mask.shape, dtype=out_dtype, device=hidden.device).masked_scatter(mask, flat.to(out_dtype))

    spans = [slice(start, start + chunk) for start in range(0, rows.shape[0], chunk)]
    recompute = torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)
    if not spans:  # no labelled token: zeros that still hang on the graph (a loss of 0 with a zero gradient)
        flat = F.linear(rows, weight[:1]).sum(dim=-1)
    elif impl == "liger":
        flat = liger_logp(rows, weight, bias, targets, temperature)
    elif recompute:
        flat = torch.cat([checkpoint(_chunk_logp, rows[s], weight, bias, targets[s], temperature, use_reentrant=False)
                          for s in spans])
    else:
        flat = torch.cat([_chunk_logp(rows[s], weight, bias, targets[s], temperature) for s in spans])
    ent = None
    if entropy:
        ents = [_chunk_entropy(rows[s], weight, bias, temperature) for s in spans]
        ent = spread(torch.cat(ents) if ents else rows.new_zeros(0))
    return spread(flat), mask, ent


def supports_head_logprobs(model) -> bool:
    """Whether the model's distribution is its output head's softmax (no post-head transform of the logits)."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (head is not None and isinstance(getattr(head, "weight", None), torch.Tensor)
            and not any(getattr(config, k, None) for k in POST_HEAD_KEYS))


@contextmanager
def lm_head_logprobs(model, labels: torch.Tensor, temperature: float = 1.0, chunk: int = 1024,
                     entropy: bool = False, impl: str = "chunked") -> Iterator[None]:
    """Within the block, ``model(...).logits`` is ``[B, L, 2]``: channel 0 the labelled tokens' log-probs at
    positions ``0..L-2`` (:func:`hidden_token_logprobs`), channel 1 their entropy (0 unless ``entropy``); the last
    position is 0. The head computes them in place of its logits, inside the model's forward."""
    head = model.get_output_embeddings()

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[1] != labels.shape[1]:
            raise ValueError(f"lm_head_logprobs: the head got {hidden.shape[1]} positions for labels of width "
                             f"{labels.shape[1]} (logits_to_keep must not be set)")
        logp, _, ent = hidden_token_logprobs(hidden, head.weight, labels, getattr(head, "bias", None), temperature,
                                             chunk, entropy, impl)
        packed = torch.stack([logp, ent if ent is not None else torch.zeros_like(logp)], dim=-1)
        return F.pad(packed, (0, 0, 0, 1))  # [B, L, 2]: the last position predicts nothing

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's forward


def model_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                         temperature: float = 1.0, chunk: int | None = None, entropy: bool = False,
                         impl: str = "chunked", forward_kwargs: dict | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logp, mask, entropy)`` of the labelled tokens of a batch under ``model``: ``logp``, ``mask`` ``[B, L-1]``
    (see :func:`~tms.objectives.nll.token_logprobs`) and, with ``entropy``, the mean per-token entropy over the
    labelled positions (:func:`~tms.objectives.policy_gradient.masked_entropy`, no gradient), else None.

    ``chunk``: positions projected through the head at a time (memory-bounded, :func:`lm_head_logprobs`); None:
    the model's full ``[B, L, V]`` logits and ``token_logprobs`` (also for a model whose logits are transformed
    after the head). ``impl``: see :func:`hidden_token_logprobs` (``model.logprob_impl``). ``forward_kwargs``: more
    arguments of the model's forward (a packed batch's ``position_ids`` and sequence boundaries, with
    ``attention_mask=None``: :mod:`tms.data.packing`)."""
    extra = dict(forward_kwargs or {})
    if chunk is None or not supports_head_logprobs(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits
        if temperature != 1.0:
            logits = logits / temperature
        logp, mask = token_logprobs(logits, labels)
        return logp, mask, masked_entropy(logits.detach(), labels) if entropy else None
    with lm_head_logprobs(model, labels, temperature, int(chunk), entropy, impl):
        packed = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits
    mask = completion_mask(labels)
    if entropy and not bool(mask.any()):
        raise ValueError("model_token_logprobs: the batch has no completion token (all labels are -100)")
    return packed[:, :-1, 0], mask, packed[:, :-1, 1].detach()[mask].mean() if entropy else None
