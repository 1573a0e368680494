"""vLLM backend (``harvest.backend=vllm``; the ``[vllm]`` extra, GPU only).

vLLM is imported lazily, inside the constructor, so nothing in the core needs it. The backend
takes token-id prompts (the same chat-formatted prompts as the HF backend), the same
:class:`~tms.generation.base.SamplingParams` and seed, and returns the same
:class:`~tms.generation.base.Completion` records, so the buffer does not depend on the backend.

Sampling policy: ``generation_config="vllm"`` keeps the model's ``generation_config.json``
(Qwen's top_k=20, repetition_penalty=1.05, ...) out of the sampling parameters, exactly as the HF
backend does; each request gets its own seed derived from ``(seed, prompt index)``, so results do
not depend on batching. Log-probs, when requested, are vLLM's raw model log-probs of the sampled
tokens (its default ``logprobs_mode``), the same quantity as :func:`~tms.generation.scoring.score_completions`.
"""
from __future__ import annotations

from typing import Sequence

from tms.generation.base import Completion, SamplingParams
from tms.core.seeds import derive_seed

INSTALL_HINT = "harvest.backend=vllm needs vLLM on a CUDA machine: pip install -e '.[vllm]' (or use harvest.backend=hf)"


# model.dtype names (tms.models.loading.DTYPES) -> the names vLLM's ``dtype`` accepts (auto|half|float16|bfloat16|
# float|float32); vLLM has no float64
VLLM_DTYPES = {"auto": "auto", None: "auto", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
               "fp16": "float16", "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


def vllm_dtype(name: str | None) -> str:
    """The vLLM ``dtype`` for a ``model.dtype`` name; raises for one vLLM cannot run (float64)."""
    if name not in VLLM_DTYPES:
        raise ValueError(f"model.dtype={name!r} cannot run on vLLM (it takes auto, bfloat16, float16 or float32); "
                         "use harvest.backend=hf / eval.backend=hf or another model.dtype")
    return VLLM_DTYPES[name]


def require_vllm():
    """Import vLLM or fail at start-up with what to install."""
    import torch

    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    if not torch.cuda.is_available():
        raise RuntimeError("harvest.backend=vllm needs a CUDA GPU and none is visible; use harvest.backend=hf on CPU")
    return vllm


class VLLMGenerator:
    """Offline ``vllm.LLM`` over a saved HF directory (an SFT checkpoint or a hub id)."""

    def __init__(self, path: str, tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 trust_remote_code: bool = False) -> None:
        vllm = require_vllm()
        self.llm = vllm.LLM(model=str(path), tensor_parallel_size=int(tensor_parallel_size), dtype=vllm_dtype(dtype),
                            seed=int(seed),
                            gpu_memory_utilization=float(gpu_memory_utilization), max_model_len=max_model_len,
                            trust_remote_code=trust_remote_code, generation_config="vllm")
        self._vllm = vllm
        tok = self.llm.get_tokenizer()
        self.eos = sorted({int(tok.eos_token_id)})

    def _params(self, n: int, sampling: SamplingParams, seed: int):
        return self._vllm.SamplingParams(
            n=int(n), temperature=float(sampling.temperature), top_p=1.0 if sampling.temperature == 0 else float(sampling.top_p),
            max_tokens=int(sampling.max_new_tokens), seed=int(seed), stop_token_ids=list(self.eos),
            logprobs=0 if sampling.logprobs else None, skip_special_tokens=True,
        )

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        params = [self._params(n, sampling, derive_seed(seed, i)) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return to_completions(outputs, sampling.logprobs)

    def close(self) -> None:
        import gc

        import torch

        self.llm = None
        gc.collect()
        torch.cuda.empty_cache()


def to_completions(outputs, with_logprobs: bool) -> list[Completion]:
    """Map vLLM ``RequestOutput`` objects to :class:`Completion` records (ordered by prompt, sample)."""
    result: list[Completion] = []
    for i, out in enumerate(outputs):
        for k, c in enumerate(out.outputs):
            lps = None
            if with_logprobs and c.logprobs is not None:
                lps = [float(step[tok].logprob) for tok, step in zip(c.token_ids, c.logprobs)]
            result.append(Completion(prompt_index=i, sample_index=k, text=c.text, token_ids=[int(t) for t in c.token_ids],
                                     finish_reason="stop" if c.finish_reason == "stop" else "length", logprobs=lps))
    return result
