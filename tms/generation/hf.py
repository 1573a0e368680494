"""Hugging Face ``generate`` backend: always available, CPU or GPU.

Prompts are expanded ``n`` times, sorted by length (less padding), left-padded and generated in
batches, by default with :func:`tms.generation.decode.sample_dropping_finished` (a finished sequence leaves the
batch, so it stops costing compute; ``decode="generate"``: ``model.generate``, which computes every row until the
longest is done; a sharded model always uses ``generate``, whose ``synced_gpus`` keeps the ranks in step). Each batch re-seeds torch from ``(seed, batch index)``, so the output is a deterministic
function of (model, prompts, n, sampling, seed, batch_size) and does not depend on what ran before.
The model's own ``generation_config`` (Qwen's top_k=20, repetition_penalty=1.05, ...) is *not*
applied: during ``generate`` it is swapped for a neutral one holding only the special-token ids,
and every processor transformers would otherwise fill from its global defaults (top_k=50!) is set
to its no-op value, so sampling is exactly softmax(logits / temperature) with nucleus ``top_p`` —
the policy whose log-probs the KL estimates and the RL ratios assume.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

import torch

from tms.core.seeds import derive_seed
from tms.generation.base import Completion, SamplingParams
from tms.generation.decode import sample_dropping_finished
from tms.generation.scoring import score_completions
from tms.models.loading import load_model, load_tokenizer
from tms.models.sharding import needs_synced_generation

log = logging.getLogger(__name__)


def eos_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos plus any eos ids of the model's generation config (Qwen has two)."""
    ids = {int(tokenizer.eos_token_id)}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in (extra if isinstance(extra, (list, tuple)) else [extra]))
    return sorted(ids)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


class HFGenerator:
    """Batched sampling with ``model.generate``.

    Args:
        model: a loaded causal LM (``eval()`` is applied) — or use :meth:`from_pretrained`.
        tokenizer: its tokenizer (eos and pad ids, decoding).
        batch_size: sequences per batch.
        decode: ``"drop_finished"`` (a finished row leaves the batch) or ``"generate"`` (``model.generate``).
    """

    DECODERS = ("drop_finished", "generate")

    def __init__(self, model, tokenizer, batch_size: int = 64, logprob_chunk: int | None = None,
                 decode: str = "drop_finished") -> None:
        if decode not in self.DECODERS:
            raise ValueError(f"decode={decode!r}: expected one of {self.DECODERS}")
        self.model, self.tokenizer, self.batch_size, self.decode = model, tokenizer, int(batch_size), decode
        self.logprob_chunk = logprob_chunk  # SamplingParams.logprobs through the memory-bounded head path
        self.eos = eos_ids(model, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str, batch_size: int = 64, device: str | None = None, dtype="auto",
                        trust_remote_code: bool = False, logprob_chunk: int | None = None,
                        decode: str = "drop_finished") -> "HFGenerator":
        tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tok, batch_size, logprob_chunk=logprob_chunk, decode=decode)

    def _generation_config(self, sampling: SamplingParams):
        """Exactly the configured policy; a ``None`` here would be filled from the model or global defaults."""
        from transformers import GenerationConfig

        greedy = sampling.temperature == 0
        return GenerationConfig(
            do_sample=not greedy,
            temperature=1.0 if greedy else float(sampling.temperature),
            top_p=1.0 if greedy else float(sampling.top_p),
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
            max_new_tokens=int(sampling.max_new_tokens),
            eos_token_id=self.eos,
            pad_token_id=int(self.tokenizer.pad_token_id),
            bos_token_id=getattr(self.model.generation_config, "bos_token_id", None),
        )

    @contextlib.contextmanager
    def _neutral_model_defaults(self) -> Iterator[None]:
        """Hide the model's generation_config (sampling defaults from the hub) while generating."""
        from transformers import GenerationConfig

        original = self.model.generation_config
        self.model.generation_config = GenerationConfig(bos_token_id=original.bos_token_id, eos_token_id=self.eos,
                                                        pad_token_id=int(self.tokenizer.pad_token_id))
        try:
            yield
        finally:
            self.model.generation_config = original

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int) -> list[Completion]:
        if n < 1:
            raise ValueError(f"number of samples per prompt must be >= 1, got {n}")
        self.model.eval()
        device = next(self.model.parameters()).device
        requests = [(p, k) for p in range(len(prompts)) for k in range(n)]
        order = sorted(range(len(requests)), key=lambda r: (-len(prompts[requests[r][0]]), r))
        config = self._generation_config(sampling)
        synced = needs_synced_generation(self.model)  # sharded: every rank steps until all ranks are done
        results: dict[int, Completion] = {}
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[start:start + self.batch_size]
            ids, mask = left_pad([prompts[requests[r][0]] for r in chunk], int(self.tokenizer.pad_token_id))
            torch.manual_seed(derive_seed(seed, b))
            if self.decode == "drop_finished" and not synced:
                new = sample_dropping_finished(self.model, ids.to(device), mask.to(device), self.eos,
                                               int(sampling.max_new_tokens), float(sampling.temperature),
                                               float(sampling.top_p))
            else:
                with self._neutral_model_defaults():
                    out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                              generation_config=config, synced_gpus=synced)
                new = out[:, ids.shape[1]:].tolist()
            for r, toks in zip(chunk, new):
                results[r] = self._completion(requests[r], toks)
        completions = [results[r] for r in range(len(requests))]
        if sampling.logprobs:
            lps = score_completions(self.model, [prompts[c.prompt_index] for c in completions],
                                    [c.token_ids for c in completions], self.tokenizer.pad_token_id,
                                    batch_size=self.batch_size, logprob_chunk=self.logprob_chunk)
            for c, lp in zip(completions, lps):
                c.logprobs = lp
        return completions

    def _completion(self, request: tuple[int, int], toks: list[int]) -> Completion:
        cut = next((i for i, t in enumerate(toks) if t in self.eos), None)
        if cut is None:
            kept, reason = toks, "length"
        else:
            kept, reason = toks[: cut + 1], "stop"
        body = kept[:-1] if reason == "stop" else kept
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        return Completion(prompt_index=request[0], sample_index=request[1], text=text, token_ids=kept,
                          finish_reason=reason)

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
