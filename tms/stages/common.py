"""What every stage shares: the model reference passed between stages, and the parts of the stage keys they share.

A stage's key holds exactly the config that determines its outputs (:mod:`tms.core.cache` adds the code identity):
``data_key`` (the data block without the target source, so α / p(t) sweeps share Stage 1 and the harvest),
``train_key`` (the training hyperparameters, the accumulation and world size, precision and strategy, the LoRA
adapters when ``model.lora`` is set), and a
:class:`ModelRef`'s ``identity`` (a hub id, a local directory's fingerprint or the stage that built it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tms.core.cache import Stage
from tms.core.distributed import accumulation, world_size
from tms.core.keys import plain
from tms.models.lora import LoraSettings


@dataclass
class ModelRef:
    """A model every stage can load: its path and the identity used in stage keys."""

    path: str
    identity: Any


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    m = cfg.model
    return {"dtype": m.get("dtype", "auto"), "attn_implementation": m.get("attn_implementation"),
            "trust_remote_code": bool(m.get("trust_remote_code", False)), "revision": m.get("revision")}


def local_fingerprint(path: str) -> dict[str, Any]:
    """Identity of a local model directory: its path and its weight files' sizes and mtimes."""
    p = Path(os.path.expanduser(path)).resolve()
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    return {"path": str(p), "weights": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]}


def data_key(cfg: DictConfig) -> dict[str, Any]:
    d = plain(cfg.data)
    d.pop("target_source", None)
    return d


def logprob_chunk(cfg: DictConfig) -> int | None:
    """``model.logprob_chunk``: positions per LM-head chunk of the token log-probs (:mod:`tms.objectives.head_logprobs`);
    None (the toy's default): the full logits."""
    value = cfg.model.get("logprob_chunk")
    return int(value) if value else None


def logprob_impl(cfg: DictConfig) -> str:
    """``model.logprob_impl``: ``chunked`` (default) or ``liger`` for the training losses' memory-bounded log-probs."""
    return str(cfg.model.get("logprob_impl") or "chunked")


def lora_settings(cfg: DictConfig) -> LoraSettings | None:
    """``model.lora``: the LoRA adapters every training stage trains (:mod:`tms.models.lora`); None: full fine-tuning."""
    return LoraSettings.from_config(cfg.model.get("lora"))


def module_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """What every training module (:class:`~tms.methods.base.CausalLMModule`) takes from ``model``: the load
    arguments, gradient checkpointing, the memory-bounded log-probs and the LoRA adapters."""
    return {"model_kwargs": model_kwargs(cfg),
            "gradient_checkpointing": bool(cfg.model.get("gradient_checkpointing", False)),
            "logprob_chunk": logprob_chunk(cfg), "logprob_impl": logprob_impl(cfg), "lora": lora_settings(cfg),
            "fused_optimizer": fused_optimizer(cfg)}


def fused_optimizer(cfg: DictConfig) -> bool:
    """``model.fused_optimizer`` (default true): torch's fused Adam / AdamW kernel where the config chose no
    implementation (:func:`tms.training.optim.build_optimizer`). The toy sets false: its θ0 and every method's
    results depend on float rounding, and its figures were measured with the per-tensor loop (docs/scale.md)."""
    return bool(cfg.model.get("fused_optimizer", True))


def train_key(cfg: DictConfig) -> dict[str, Any]:
    sft = plain(cfg.sft)
    if not sft.get("packing"):  # padded batches: the key of every stage trained before sft.packing existed
        sft.pop("packing", None)
    key = {"sft": sft, "accumulate": accumulation(cfg.sft, cfg.trainer), "world_size": world_size(cfg.trainer),
           "precision": cfg.trainer.precision, "model": model_kwargs(cfg),
           "gradient_checkpointing": bool(cfg.model.get("gradient_checkpointing", False))}
    if not fused_optimizer(cfg):  # the same update, other float rounding (keys of fused runs unchanged)
        key["fused_optimizer"] = False
    if cfg.get("callbacks"):  # the user's callbacks group may change training (e.g. early stopping)
        key["callbacks"] = plain(cfg.callbacks)
    if logprob_chunk(cfg):  # memory-bounded log-probs: the same loss, other float rounding
        key["logprob_chunk"] = logprob_chunk(cfg)
        if logprob_impl(cfg) != "chunked":
            key["logprob_impl"] = logprob_impl(cfg)
    lora = lora_settings(cfg)
    if lora is not None:  # LoRA adapters instead of full fine-tuning (absent when off: full fine-tuning keys unchanged)
        key["lora"] = lora.key()
    strategy = plain(cfg.trainer.get("strategy"))
    if strategy not in (None, "auto"):  # DDP / FSDP / FSDP2 change the numerics (sharding, mixed precision)
        key["strategy"] = strategy
    return key


def final_checkpoint(stage: Stage) -> ModelRef:
    idx = stage.manifest()["info"]["trajectory"]
    last = idx["checkpoints"][str(idx["T"])]
    return ModelRef(str(stage.dir / "checkpoints" / last["path"]), {"stage": f"{stage.name}/{stage.hash}", "t": idx["T"]})


def link(path: Path, target: Path) -> None:
    """A symlink in the run directory to a cached stage output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(Path(target).resolve(), target_is_directory=True)
