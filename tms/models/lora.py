"""LoRA adapters (``model.lora``) through the optional ``peft`` package (``pip install 'tms[lora]'``).

``model.lora`` null or absent: full fine-tuning (every method's default). A mapping turns on LoRA for every training
stage (Stage 1 SFT, the students of TMS / Self-SFT / Final-SFT, GRPO / REINFORCE): :func:`apply_lora` injects the
adapters into the loaded HF model in :meth:`tms.methods.base.CausalLMModule.configure_model` (before the sharding
hook) and freezes everything else, so the optimiser only gets the adapters. The module keeps training the HF model
itself (``PeftModel.get_base_model()``, its ``Linear`` layers replaced by LoRA layers): forward, ``generate``, the
LM head and ``save_pretrained`` are the HF model's, as without LoRA.

Every HF checkpoint the framework saves stays a plain model directory: :func:`merged_state_dict` folds
:math:`W + \\tfrac{\\alpha}{r} B A` into a copy of the weights (the training model is never merged in place) and
the export saves that state dict; with ``save_adapters: true`` the adapter alone goes to ``<checkpoint>/adapter``
(``adapter_model.safetensors`` + ``adapter_config.json``, loadable with ``peft.PeftModel.from_pretrained`` on θ0).

``peft`` is imported lazily: nothing here needs it unless LoRA is configured.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from tms.core.checks import integer, known_keys, number, require
from tms.core.errors import ConfigError

#: the oldest peft release tested (pyproject's ``lora`` extra)
MIN_PEFT = "0.13"
#: the adapter's name inside peft (one adapter per model)
ADAPTER = "default"
#: subdirectory of a checkpoint that holds the adapter (``model.lora.save_adapters: true``)
ADAPTER_DIR = "adapter"


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """The ``model.lora`` block, checked (:meth:`from_config`).

    Attributes:
        r: adapter rank (required).
        alpha: scaling numerator, the update is ``alpha / r · B A``; default ``2 r``.
        dropout: dropout on the adapter's input (training only).
        target_modules: ``"all-linear"`` (every linear layer but the output head) or module names (``q_proj``...).
        save_adapters: also save each checkpoint's adapter in ``<checkpoint>/adapter``.
    """

    r: int
    alpha: float
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    save_adapters: bool = False

    KEYS = ("r", "alpha", "dropout", "target_modules", "save_adapters")

    @classmethod
    def from_config(cls, node: Any, prefix: str = "model.lora") -> "LoraSettings | None":
        """The settings of a ``model.lora`` node (None: LoRA off); every error names its key."""
        from omegaconf import OmegaConf

        if node is None:
            return None
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        require(isinstance(node, dict), prefix,
                f"must be null (full fine-tuning) or a mapping with keys {list(cls.KEYS)}, got {node!r}; "
                f"e.g. +{prefix}.r=16")
        known_keys(node, prefix, cls.KEYS)
        r = node.get("r")
        integer(f"{prefix}.r", r, minimum=1)
        alpha = node.get("alpha")
        number(f"{prefix}.alpha", alpha, 0, open_low=True, optional=True)
        dropout = node.get("dropout", 0.0)
        number(f"{prefix}.dropout", dropout, 0, 1, open_high=True)
        save = node.get("save_adapters", False)
        require(isinstance(save, bool), f"{prefix}.save_adapters", f"must be true or false, got {save!r}")
        return cls(r=int(r), alpha=float(2 * r if alpha is None else alpha), dropout=float(dropout),
                   target_modules=target_modules(node.get("target_modules", "all-linear"), f"{prefix}.target_modules"),
                   save_adapters=save)

    def key(self) -> dict[str, Any]:
        """Plain values for the training stages' cache keys."""
        out = dataclasses.asdict(self)
        out["target_modules"] = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return out

    def peft_config(self):
        """The ``peft.LoraConfig`` of these settings (causal LM, no bias training)."""
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none", task_type="CAUSAL_LM")


def target_modules(value: Any, key: str) -> str | tuple[str, ...]:
    """``"all-linear"`` or a non-empty list of module names (not the output head: see :func:`apply_lora`)."""
    if isinstance(value, str):
        require(value == "all-linear", key, f"must be 'all-linear' or a list of module names (e.g. [q_proj, v_proj]), "
                f"got {value!r}")
        return value
    ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) and v.strip() for v in value)
    require(ok, key, f"must be 'all-linear' or a non-empty list of module names (e.g. [q_proj, v_proj]), got {value!r}")
    require("lm_head" not in value, key, "LoRA on the output head (lm_head) is not supported; leave it out "
            "('all-linear' does)")
    return tuple(str(v) for v in value)


def check_peft() -> None:
    """``peft`` importable (with its own dependencies) and recent enough, or a ConfigError naming ``model.lora``."""
    from packaging.version import Version

    if importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora: LoRA needs the peft package, which is not installed: pip install 'tms[lora]' "
                          f"(or pip install 'peft>={MIN_PEFT}'); or set model.lora=null for full fine-tuning")
    try:
        peft = importlib.import_module("peft")
    except ImportError as err:  # installed without a dependency of its own (e.g. accelerate)
        raise ConfigError(f"model.lora: peft is installed but cannot be imported ({err}); reinstall it with its "
                          "dependencies: pip install 'tms[lora]'") from err
    require(Version(peft.__version__) >= Version(MIN_PEFT), "model.lora",
            f"needs peft >= {MIN_PEFT}, found {peft.__version__}: pip install -U 'tms[lora]'")


# -- the adapted model --------------------------------------------------------------------------------------------
def apply_lora(model: torch.nn.Module, settings: LoraSettings):
    """Inject ``settings``' adapters into the HF ``model`` in place and freeze every other parameter.

    Returns the ``PeftModel`` wrapper (for :func:`adapters_disabled` and the adapter export); ``wrapper.get_base_model()``
    is ``model``. Refuses (ConfigError) target names the model does not have, and adapters on the output head or on a
    weight tied to another module (the merged export would untie them). Also runs on a meta-device model (validation).
    """
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        wrapper = get_peft_model(model, settings.peft_config())
    except ValueError as err:  # e.g. "Target modules {'x'} not found in the base model"
        raise ConfigError(f"model.lora.target_modules: {err}") from err
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    require(not isinstance(head, BaseTunerLayer), "model.lora.target_modules",
            "LoRA on the output head is not supported (the memory-bounded log-probs read its weight); leave it out")
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for name, layer in lora_layers(model).items():
        weight = layer.get_base_layer().weight
        require(len(names.get(id(weight), [])) <= 1, "model.lora.target_modules",
                f"{name} shares its weight with {[n for n in names[id(weight)] if not n.startswith(name + '.')]} (tied "
                "embeddings); LoRA on a tied weight is not supported, leave that module out")
    return wrapper


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The LoRA layers of ``model`` by module name (FSDP wrapper prefixes removed)."""
    from peft.tuners.lora import LoraLayer

    return {clean_name(n): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def clean_name(name: str) -> str:
    """A parameter or module name without the FSDP1 / checkpoint-wrapper prefixes."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


@contextmanager
def adapters_disabled(wrapper) -> Iterator[torch.nn.Module]:
    """Within the block the adapted HF model (``wrapper.get_base_model()``, yielded) computes with the base weights θ0
    alone, in eval mode; afterwards its adapters and its train/eval mode are back.

    The frozen reference of GRPO / REINFORCE under LoRA: the base weights never change, so this *is* θ0.
    """
    model = wrapper.get_base_model()
    was_training = model.training
    model.eval()
    try:
        with wrapper.disable_adapter():
            yield model
    finally:
        model.train(was_training)


# -- export ---------------------------------------------------------------------------------------------------------
def _delta(layer, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``scaling · B A`` of LoRA ``layer`` (module ``name``) from ``state``, in float32, in the base weight's layout."""
    from peft.tuners.lora import Embedding, Linear

    scale = float(layer.scaling[ADAPTER])
    if isinstance(layer, Linear):
        a, b = state[f"{name}.lora_A.{ADAPTER}.weight"], state[f"{name}.lora_B.{ADAPTER}.weight"]
        delta = b.float() @ a.float()
        return (delta.T if layer.fan_in_fan_out else delta) * scale
    if isinstance(layer, Embedding):
        a, b = state[f"{name}.lora_embedding_A.{ADAPTER}"], state[f"{name}.lora_embedding_B.{ADAPTER}"]
        return (b.float() @ a.float()).T * scale
    raise NotImplementedError(f"merging a LoRA {type(layer).__name__} layer ({name}) is not supported; "
                              "target Linear or Embedding modules only")


def merged_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The plain HF state dict of the adapted ``model`` with every adapter merged: ``W + scaling · B A``.

    ``state``: the model's full state dict (e.g. gathered from the shards); default ``model.state_dict()``. The
    result has the keys of the model without LoRA; merged weights are new tensors (float32 sum, cast to the weight's
    dtype), every other tensor is the one from ``state``: nothing of ``model`` is modified.
    """
    state = {clean_name(k): v for k, v in (model.state_dict() if state is None else state).items()}
    out = dict(state)
    for name, layer in lora_layers(model).items():
        for key in [k for k in out if k.startswith(f"{name}.lora_")]:
            del out[key]
        for key in [k for k in out if k.startswith(f"{name}.base_layer.")]:
            out[name + key[len(f"{name}.base_layer"):]] = out.pop(key)
        weight = out[f"{name}.weight"]
        out[f"{name}.weight"] = (weight.float() + _delta(layer, state, name).to(weight.device)).to(weight.dtype)
    left = [k for k in out if ".lora_" in k or ".base_layer." in k]
    if left:
        raise RuntimeError(f"merged_state_dict: adapter tensors left over after merging: {left[:3]}")
    return out


def save_adapter(wrapper, out_dir: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """``adapter_model.safetensors`` + ``adapter_config.json`` of ``wrapper`` (a PeftModel) in ``out_dir``.

    ``state``: the adapted model's full state dict (keys of ``wrapper.get_base_model()``), when gathered from shards.
    """
    extra = {}
    if state is not None:
        extra["state_dict"] = {f"base_model.model.{clean_name(k)}": v for k, v in state.items()}
    wrapper.save_pretrained(str(out_dir), safe_serialization=True, **extra)
