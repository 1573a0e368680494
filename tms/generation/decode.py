"""Batched KV-cache sampling in which a finished sequence stops costing compute.

``model.generate`` keeps every row of a batch in every forward until the *longest* row is done: a row that
emitted eos at step 3 of a 40-step batch is computed 37 more times (its outputs replaced by padding). Here a
row leaves the batch the step it finishes: its keys and values are dropped from the cache
(``Cache.batch_select_indices``) and its attention-mask and position rows with them, so the cost of a batch
is the sum of its sequences' lengths, not ``rows × longest``.

The policy is exactly :mod:`transformers`' sampling with the neutral processors of
:class:`tms.generation.hf.HFGenerator`: logits in float32, divided by the temperature, nucleus-filtered as
``TopPLogitsWarper`` does (tokens of cumulative probability ``<= 1 - top_p`` in ascending order are removed,
the most likely one always kept), one ``torch.multinomial`` draw per row from the softmax; greedy is the
argmax. Until the first row finishes the draws are those ``generate`` makes for the same batch and seed
(tests/test_decode.py); after it the remaining rows draw from a smaller tensor, so samples differ from
``generate``'s while following the same distribution (the output is still a deterministic function of
model, prompts, sampling and the torch seed).
"""
from __future__ import annotations

import inspect

import torch


def filter_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """``scores`` ``[B, V]`` with the tokens outside the nucleus of mass ``top_p`` set to ``-inf``.

    In ascending order of score, a token is removed when the cumulative softmax mass up to and including it is
    ``<= 1 - top_p``; the top token is always kept (transformers' ``TopPLogitsWarper``, min_tokens_to_keep=1).
    """
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)
    remove_sorted = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of ``logits`` ``[B, V]``: argmax when ``temperature == 0``, else a draw from
    ``softmax(filter_top_p(logits / temperature, top_p))``."""
    logits = logits.float()
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    scores = filter_top_p(logits / float(temperature) if temperature != 1.0 else logits, float(top_p))
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)


def cache_argument(model) -> str:
    """The name of the KV-cache argument of ``model.forward`` (``cache`` in recent transformers, earlier
    ``past_key_values``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model: its HF model
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model):
    """An empty dynamic cache laid out for ``model``'s layers (sliding-window layers where it has them)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # an older DynamicCache without the config argument
        return DynamicCache()


@torch.no_grad()
def sample_dropping_finished(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, eos: list[int],
                             max_new_tokens: int, temperature: float, top_p: float,
                             compact_fraction: float = 0.125) -> list[list[int]]:
    """Sample up to ``max_new_tokens`` tokens after each left-padded prompt row; returns each row's new tokens
    (ending with the eos id when it stopped on one).

    Args:
        model: a causal LM taking ``input_ids``, ``attention_mask``, ``position_ids``, a KV cache and
            ``logits_to_keep``.
        input_ids, attention_mask: ``[B, L]`` left-padded prompts (mask 1 on tokens).
        eos: the ids that end a sequence (an empty list: every row runs to ``max_new_tokens``).
        compact_fraction: finished rows leave the batch once they are at least this fraction of it (each
            compaction copies the KV cache, so dropping one row at a time would cost more than it saves;
            0: at every step). Until then a finished row is computed and its tokens discarded, as in ``generate``.
    """
    device = input_ids.device
    rows = input_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    if rows == 0:
        return out
    cache, cache_arg = new_cache(model), cache_argument(model)
    mask = attention_mask.to(device=device, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    live = torch.arange(rows, device=device)  # the original row of each row still in the batch
    running = torch.ones(rows, dtype=torch.bool, device=device)  # per batch row: not finished yet
    stop = torch.tensor(sorted(set(int(e) for e in eos)), dtype=torch.long, device=device)
    step_ids, step_pos = input_ids, positions
    for _ in range(int(max_new_tokens)):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                       logits_to_keep=1, **{cache_arg: cache}).logits[:, -1]
        if step_ids is input_ids and cache.get_seq_length() != input_ids.shape[1]:
            raise RuntimeError(f"{type(model).__name__}.forward did not fill the KV cache passed as {cache_arg!r}: "
                               "this model cannot use the dropping decoder (HFGenerator(decode='generate'))")
        tokens = next_tokens(logits, temperature, top_p)
        for r, tok, on in zip(live.tolist(), tokens.tolist(), running.tolist()):
            if on:
                out[r].append(tok)
        if len(stop):
            running &= ~torch.isin(tokens, stop)
        n_running = int(running.sum())
        if n_running == 0:
            break
        last_pos = step_pos[:, -1:]
        if running.shape[0] - n_running >= max(1.0, compact_fraction * running.shape[0]):
            keep = torch.nonzero(running).squeeze(1)  # the finished rows leave the batch
            cache.batch_select_indices(keep)
            live, mask, tokens, last_pos, running = live[keep], mask[keep], tokens[keep], last_pos[keep], running[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        step_ids, step_pos = tokens[:, None], last_pos + 1
    return out
