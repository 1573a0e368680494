"""Choices made from the machine: ``trainer=auto`` (the paper models' default) and ``harvest.backend=auto``.

:func:`resolve_hardware` runs first in :func:`tms.config.validate.validate`, before any weights are loaded, and
rewrites the config in place, so ``config.resolved.yaml``, the stage keys and every later check see the trainer
and backend that actually run:

* ``trainer=auto`` (``conf/trainer/auto.yaml``): with more than one local GPU the ``auto.multi_gpu`` trainer
  option (``fsdp``: every GPU, sharded full fine-tuning; with ``model.lora`` set the ``auto.multi_gpu_lora`` option,
  ``ddp``), with one the ``auto.single_gpu`` option (``gpu``); any
  ``trainer.<key>`` given on the command line is applied on top of the chosen option. Without CUDA the run stops
  with a :class:`~tms.core.errors.ConfigError` that says the model needs a GPU and how to force a CPU run.
* ``harvest.backend=auto``: ``vllm`` when vLLM is importable, CUDA is visible and the trainer runs on GPUs;
  ``hf`` otherwise (the toy world, CPU runs, machines without the ``[vllm]`` extra).
* ``model.cpu_bf16: true`` (SmolLM2-135M's config): on a CPU trainer (``trainer.accelerator=cpu``) of a CPU with
  AMX-BF16 tiles, training runs ``trainer.precision=bf16-mixed`` (fp32 weights and optimiser state, the forward
  under bf16 autocast) and the harvest samples from bf16 weights (``model.generation_dtype=bfloat16``); evaluation
  keeps ``model.dtype``, so its scores, KL and PLD compare with fp32 runs. 1.8x faster SmolLM2 training steps and
  1.7x faster sampling on a 2-core AMX Xeon (``bench/bf16_cpu.py``); without AMX bf16 is emulated and slower, so
  nothing changes. The toy (``model=tiny``) keeps fp32: at its width 128 bf16-mixed Stage 1 is slower end to end
  (``bench/sft_throughput.py``). ``model.cpu_bf16=false`` keeps fp32 everywhere.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tms.core.errors import ConfigError

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parents[2] / "conf"
GPU_ACCELERATORS = ("gpu", "cuda", "auto")


def local_gpus() -> int:
    """CUDA devices visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def load_option(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml`` with its same-group defaults list merged in (``- gpu``, ``- _self_``), as Hydra
    composes it; interpolations are kept unresolved."""
    path = CONF / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}: no option {name!r} ({path} does not exist)")
    node = OmegaConf.load(path)
    defaults = list(node.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        if not isinstance(entry, str):
            raise ConfigError(f"{group}/{name}.yaml: only same-group defaults are supported here, got {entry!r}")
        merged = OmegaConf.merge(merged, node if entry == "_self_" else load_option(group, entry))
    return merged


def _user_changes(node: DictConfig, option: DictConfig) -> dict[str, Any]:
    """The keys of ``node`` (the composed ``trainer=auto`` node) whose value differs from ``option`` (auto.yaml as
    shipped): what the command line set on top of it."""
    mine = OmegaConf.to_container(node, resolve=False)
    shipped = OmegaConf.to_container(option, resolve=False)
    return {k: v for k, v in mine.items() if k != "auto" and (k not in shipped or shipped[k] != v)}


def resolve_trainer(cfg: DictConfig, gpus: int | None = None) -> str | None:
    """Replace a ``trainer=auto`` node by the trainer option this machine runs; returns its name (None: not auto)."""
    node = cfg.get("trainer")
    if node is None or node.get("auto") is None:
        return None
    choice = node.auto
    gpus = local_gpus() if gpus is None else int(gpus)
    model = cfg.get("model") or {}
    if gpus == 0:
        raise ConfigError(
            f"trainer: model={model.get('name')} ({model.get('name_or_path')}) is trained with trainer=auto, which needs "
            "a CUDA GPU, and this machine has none (torch.cuda.device_count() == 0). Run it on a GPU machine, pick the "
            "offline toy world (model=tiny, the default), or force a CPU run with trainer=cpu (fp32, very slow for a "
            "model of this size)")
    multi = choice.get("multi_gpu_lora") if model.get("lora") is not None else None  # LoRA: not FSDP1 (docs/lora.md)
    name = str((multi or choice.multi_gpu) if gpus > 1 else choice.single_gpu)
    resolved = OmegaConf.merge(load_option("trainer", name), _user_changes(node, load_option("trainer", "auto")))
    with open_dict(cfg):
        cfg.trainer = resolved
    log.info("trainer=auto: %d local GPU(s) -> trainer=%s", gpus, name)
    return name


def resolve_backend(cfg: DictConfig) -> str | None:
    """Replace ``harvest.backend=auto`` by ``vllm`` or ``hf`` (see the module docstring); returns it (None: not auto)."""
    h = cfg.get("harvest")
    if h is None or h.get("backend") != "auto":
        return None
    on_gpu = str((cfg.get("trainer") or {}).get("accelerator", "cpu")) in GPU_ACCELERATORS
    name = "vllm" if on_gpu and vllm_installed() and local_gpus() > 0 else "hf"
    with open_dict(cfg):
        cfg.harvest.backend = name
    return name


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in AMX tiles (torch's own probe; False where torch has none)."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def resolve_cpu_bf16(cfg: DictConfig, amx: bool | None = None) -> bool:
    """Apply ``model.cpu_bf16`` (see the module docstring) in place; returns whether bf16 was chosen."""
    model, trainer = cfg.get("model") or {}, cfg.get("trainer") or {}
    if not model.get("cpu_bf16") or str(trainer.get("accelerator", "cpu")) != "cpu":
        return False
    if not (cpu_has_amx_bf16() if amx is None else amx):
        log.info("model.cpu_bf16: this CPU has no AMX-BF16 tiles: fp32 (bf16 would be emulated)")
        return False
    with open_dict(cfg):
        if str(trainer.get("precision")) == "32-true":
            cfg.trainer.precision = "bf16-mixed"
        if model.get("generation_dtype") is None:
            cfg.model.generation_dtype = "bfloat16"
    log.info("model.cpu_bf16: AMX-BF16 CPU -> trainer.precision=%s, harvest in %s", cfg.trainer.precision,
             cfg.model.generation_dtype)
    return True


def resolve_hardware(cfg: DictConfig, gpus: int | None = None) -> DictConfig:
    """:func:`resolve_trainer`, :func:`resolve_backend` then :func:`resolve_cpu_bf16`, in place (a no-op for a config
    without ``auto`` or ``model.cpu_bf16``)."""
    resolve_trainer(cfg, gpus)
    resolve_backend(cfg)
    resolve_cpu_bf16(cfg)
    return cfg
