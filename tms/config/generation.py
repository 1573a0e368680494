"""The sampling blocks (``harvest``, ``eval.sampling``) and the harvest's own keys, checked before any compute."""
from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from tms.core.checks import integer, number, require
from tms.core.errors import ConfigError
from tms.generation.factory import BACKENDS, check_backend
from tms.generation.vllm import vllm_dtype

log = logging.getLogger(__name__)


def check_sampling(node: DictConfig, prefix: str, n_key: str, backend: str = "hf", max_new_tokens: bool = True,
                   backend_key: str | None = None) -> None:
    """``temperature`` >= 0, ``top_p`` in (0, 1], ``max_new_tokens`` and the samples per prompt ``n_key`` >= 1;
    the vLLM backend's own limits (temperature <= 2, one sample per prompt when greedy)."""
    if max_new_tokens:
        integer(f"{prefix}.max_new_tokens", node.get("max_new_tokens"))
    t, n = node.get("temperature", 1.0), node.get(n_key, 1)
    number(f"{prefix}.temperature", t, 0)
    number(f"{prefix}.top_p", node.get("top_p", 1.0), 0, 1, open_low=True)
    integer(f"{prefix}.{n_key}", n)
    if backend == "vllm":
        require(t <= 2, f"{prefix}.temperature", f"{t} is above vLLM's limit of 2 (the vllm backend refuses it at run "
                f"time); lower it or use {backend_key or prefix + '.backend'}=hf")
        require(t > 0 or n == 1, f"{prefix}.temperature", f"0 (greedy) with {prefix}.{n_key}={n}: vLLM refuses greedy "
                f"sampling with more than one sample per prompt; set {prefix}.{n_key}=1 or a temperature > 0")
    elif t == 0 and n > 1:
        log.warning("%s.temperature=0 (greedy) with %s.%s=%d: the %d samples of every prompt will be identical",
                    prefix, prefix, n_key, n, n)


def check_vllm_dtype(cfg: DictConfig, key: str) -> None:
    """``model.dtype`` (and ``model.generation_dtype``) is one vLLM can run (:func:`~tms.generation.vllm.vllm_dtype`);
    the error names ``key``, the setting that chose vLLM."""
    try:
        vllm_dtype(cfg.model.get("dtype", "auto"))
        vllm_dtype(cfg.model.get("generation_dtype") or "auto")  # the harvest's weights (tms.generation.factory)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from err


def check_harvest(cfg: DictConfig, T: int) -> None:
    """The ``harvest`` block when the run (or ``python harvest.py``) generates from the train prompts."""
    h = cfg.harvest
    require(h.get("backend") in BACKENDS, "harvest.backend", f"must be one of {BACKENDS}, got {h.get('backend')!r}")
    check_sampling(h, "harvest", "samples_per_prompt", backend=h.backend)
    integer("harvest.shard_size", h.get("shard_size"))
    integer("harvest.batch_size", h.get("batch_size"))
    integer("harvest.prompt_subset", h.get("prompt_subset"), optional=True)
    if h.backend == "vllm":
        check_vllm_dtype(cfg, "harvest.backend")
        integer("harvest.tensor_parallel_size", h.get("tensor_parallel_size", 1))
        number("harvest.gpu_memory_utilization", h.get("gpu_memory_utilization", 0.85), 0, 1, open_low=True)
    ts = h.get("checkpoints")
    if ts is not None:
        ok = OmegaConf.is_list(ts) and len(ts) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in ts)
        require(ok, "harvest.checkpoints", f"must be null or a non-empty list of checkpoint indices t, got {ts!r}")
        bad = [t for t in ts if not 0 <= t <= T]
        require(not bad, "harvest.checkpoints", f"{bad} outside 0..T={T} (0 = θ0, T = sft.num_checkpoints)")
    check_backend(h.backend)  # vLLM: installed, and a GPU visible
