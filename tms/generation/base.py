"""The generator seam: ``generate(prompts, n, sampling, seed) -> completions``.

Every backend (Hugging Face ``generate``, vLLM) returns the same :class:`Completion` records, so
the trajectory buffer, the RL rollouts and the evaluation do not depend on the backend.

Prompts are token-id lists that already contain the chat template and the generation prompt
(see :func:`tms.data.formatting.prompt_ids`); completions are decoded without special tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Decoding policy. ``temperature == 0`` means greedy decoding (``top_p`` is then ignored)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    logprobs: bool = False  # return the sampled tokens' log-probabilities under the *raw* model

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclasses.dataclass
class Completion:
    """One sampled completion of one prompt.

    Attributes:
        prompt_index: index of the prompt in the request.
        sample_index: k in 0..n-1.
        text: decoded completion (special tokens removed, eos not included).
        token_ids: generated token ids, eos included when generation stopped on it.
        finish_reason: ``"stop"`` (eos generated) or ``"length"`` (hit ``max_new_tokens``).
        logprobs: per-token log pi(y_i | x, y_<i) of ``token_ids`` under the unmodified model
            distribution (temperature 1, no top-p), when requested; else None.
    """

    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class Generator(Protocol):
    """A text-generation backend bound to one model."""

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int
    ) -> list[Completion]:
        """Sample ``n`` completions for every prompt; results are ordered by (prompt, sample).

        The result is a deterministic function of (model, prompts, n, sampling, seed) for a given
        backend and device.
        """
        ...

    def close(self) -> None:
        """Release the model (GPU memory)."""
        ...
