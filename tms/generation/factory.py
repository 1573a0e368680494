"""Pick a generation backend from config: ``hf`` (always available) or ``vllm`` (GPU, optional extra)."""
from __future__ import annotations

from typing import Any, Mapping

from tms.generation.hf import HFGenerator
from tms.generation.isolated import IsolatedGenerator
from tms.models.loading import load_tokenizer

BACKENDS = ("hf", "vllm")


def check_backend(name: str) -> None:
    """Fail at start-up, before any compute, for an unknown or unusable backend."""
    if name not in BACKENDS:
        raise ValueError(f"harvest.backend={name!r}: expected one of {BACKENDS}")
    if name == "vllm":
        from tms.generation.vllm import require_vllm

        require_vllm()


def generation_dtype(model_cfg: Mapping[str, Any]) -> str:
    """The weights' dtype a generator samples from: ``model.generation_dtype``, else ``model.dtype`` (default auto)."""
    return str(model_cfg.get("generation_dtype") or model_cfg.get("dtype", "auto"))


def make_generator(backend: str, path: str, cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], seed: int,
                   isolated: bool | None = None):
    """A generator over the model saved at ``path``.

    ``isolated``: build and run it in its own process (:class:`~tms.generation.isolated.IsolatedGenerator`), so its
    GPU memory and process groups are released on ``close()``; default: True for vLLM (one engine per checkpoint /
    evaluated model), False for HF (it shares the process, e.g. RL's training model)."""
    check_backend(backend)
    dtype = generation_dtype(model_cfg)
    trust = bool(model_cfg.get("trust_remote_code", False))
    isolated = backend == "vllm" if isolated is None else bool(isolated)
    if backend == "vllm":
        from tms.generation.vllm import VLLMGenerator

        factory, args = VLLMGenerator, (path,)
        kwargs = {"tensor_parallel_size": int(cfg.get("tensor_parallel_size", 1)), "dtype": dtype, "seed": seed,
                  "gpu_memory_utilization": float(cfg.get("gpu_memory_utilization", 0.85)), "trust_remote_code": trust}
    else:
        factory, args = HFGenerator.from_pretrained, (path,)
        kwargs = {"batch_size": int(cfg.get("batch_size", 64)), "dtype": dtype, "trust_remote_code": trust}
        if cfg.get("logprob_chunk"):
            kwargs["logprob_chunk"] = int(cfg["logprob_chunk"])
    if not isolated:
        return factory(*args, **kwargs)
    return IsolatedGenerator(factory, *args, tokenizer=load_tokenizer(path, trust_remote_code=trust), **kwargs)
