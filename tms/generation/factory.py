"""Pick a generation backend from config: ``hf`` (always available) or ``vllm`` (GPU, optional extra)."""
from __future__ import annotations

from typing import Any, Mapping

from tms.generation.hf import HFGenerator

BACKENDS = ("hf", "vllm")


def check_backend(name: str) -> None:
    """Fail at start-up, before any compute, for an unknown or unusable backend."""
    if name not in BACKENDS:
        raise ValueError(f"harvest.backend={name!r}: expected one of {BACKENDS}")
    if name == "vllm":
        from tms.generation.vllm import require_vllm

        require_vllm()


def make_generator(backend: str, path: str, cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], seed: int):
    """A generator over the model saved at ``path``."""
    check_backend(backend)
    dtype = model_cfg.get("dtype", "auto")
    trust = bool(model_cfg.get("trust_remote_code", False))
    if backend == "vllm":
        from tms.generation.vllm import VLLMGenerator

        return VLLMGenerator(path, tensor_parallel_size=int(cfg.get("tensor_parallel_size", 1)), dtype=dtype, seed=seed,
                             gpu_memory_utilization=float(cfg.get("gpu_memory_utilization", 0.85)),
                             trust_remote_code=trust)

    return HFGenerator.from_pretrained(path, batch_size=int(cfg.get("batch_size", 64)), dtype=dtype, trust_remote_code=trust)
