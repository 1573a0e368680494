"""Distributed strategy builders from config (``trainer.strategy``).

A plain string (``auto``, ``ddp``, ``ddp_spawn``) is passed to Lightning as is; a mapping with a
``_target_`` is instantiated by Hydra. Besides Lightning's own classes (``DDPStrategy`` for
``trainer=ddp`` / ``ddp_cpu``) this module provides the two sharded strategies:

* :class:`FSDP` (``trainer=fsdp``, GPU): Lightning's ``FSDPStrategy`` (FSDP1) with one FSDP unit per
  decoder layer of the *loaded* model (its class from ``_no_split_modules``, whatever the family),
  bf16 mixed precision with fp32 master weights, optional activation checkpointing and sharded
  Lightning checkpoints (``state_dict_type: sharded``);
* :class:`FSDP2` (``trainer=fsdp2``, GPU; ``trainer=fsdp2_cpu``, CPU over gloo): Lightning's
  ``ModelParallelStrategy`` (pure data parallel) with ``torch.distributed.fsdp.fully_shard`` applied
  to each decoder layer and then to the whole model.

Both shard the HF model inside :meth:`tms.methods.base.CausalLMModule.configure_model` through
:meth:`shard_module` (so ``module.model`` is the FSDP root: its forward, ``generate`` and gradient
clipping see the whole model), clip gradients through :meth:`clip_gradients_of` where Lightning
cannot, and :func:`full_state_dict` gathers the consolidated weights for the HF ``save_pretrained``
export of every trajectory checkpoint.

The decoder-layer class comes from the loaded model (:func:`tms.models.loading.decoder_layer_classes`); with
``layer_classes_from`` (a model directory or hub id) it is found up front from the config alone
(:func:`layer_classes_from_config`: the model is instantiated on the meta device, no weights read).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from tms.models.loading import decoder_layer_classes, resolve_dtype

log = logging.getLogger(__name__)


def build_strategy(spec: Any):
    if spec is None:
        return "auto"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and "_target_" in spec:
        from hydra.utils import instantiate

        return instantiate(spec, _convert_="all")
    raise ValueError(f"trainer.strategy: expected a name or a mapping with _target_, got {spec!r}")


def layer_classes_from_config(name_or_path: str, trust_remote_code: bool = False) -> set[type]:
    """The decoder-layer classes of a model from its ``config.json`` alone (meta-device instantiation)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return decoder_layer_classes(model)


def _classes_or_none(name_or_path: str | None) -> set[type] | None:
    """:func:`layer_classes_from_config`, or None (found later from the loaded model) when unavailable."""
    if not name_or_path:
        return None
    try:
        return layer_classes_from_config(name_or_path)
    except (OSError, ValueError) as err:  # offline without a cached config, or not a decoder model
        log.info("decoder layers of %s not resolved from its config (%s); using the loaded model's", name_or_path, err)
        return None


def _dtypes(spec: dict[str, str] | None) -> dict[str, torch.dtype]:
    return {k: resolve_dtype(v) for k, v in (spec or {}).items() if v is not None}


def apply_activation_checkpointing(model: torch.nn.Module, classes: set[type]) -> None:
    """Recompute each decoder layer's activations in the backward pass (torch's non-reentrant checkpoint
    wrapper); HF's own gradient checkpointing is switched off so that nothing is checkpointed twice."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl,
                                                                             apply_activation_checkpointing as apply,
                                                                             checkpoint_wrapper)

    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):  # HF's flag on its layers
        model.gradient_checkpointing_disable()
    wrapper = lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT)  # noqa: E731
    apply(model, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: isinstance(m, tuple(classes)))


def full_state_dict(strategy, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The consolidated state dict of a sharded ``model`` on rank 0 (``{}`` elsewhere); None when the
    strategy does not shard parameters. Collective: every rank must call it."""
    if not getattr(strategy, "shards_parameters", False):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if k not in tied_aliases(model)}


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """Names of parameters that alias an earlier one (tied input/output embeddings). A gathered state dict
    holds them as separate tensors; ``save_pretrained`` must not see them (it drops them for a plain model)."""
    def clean(name: str) -> str:
        return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")

    keep = {clean(n) for n, _ in model.named_parameters()}
    return {clean(n) for n, _ in model.named_parameters(remove_duplicate=False)} - keep


class _Sharding:
    """What both sharded strategies share: layer classes, master dtype and activation checkpointing."""

    shards_parameters = True

    def _init_sharding(self, layer_classes_from: str | None, master_dtype: str | None,
                       activation_checkpointing: bool) -> None:
        self.layer_classes = _classes_or_none(layer_classes_from)
        self.master_dtype = master_dtype
        self.activation_checkpointing = bool(activation_checkpointing)

    def _prepare(self, model: torch.nn.Module, checkpointing: bool = True) -> tuple[type, ...]:
        """Layer classes of ``model``; casts it to the master dtype and (``checkpointing``) applies activation
        checkpointing if configured."""
        if self.layer_classes is None:
            self.layer_classes = decoder_layer_classes(model)
        if self.master_dtype:
            model.to(resolve_dtype(self.master_dtype))
        if checkpointing and self.activation_checkpointing:
            apply_activation_checkpointing(model, self.layer_classes)
        return tuple(self.layer_classes)


class FSDP(_Sharding, FSDPStrategy):
    """Lightning's FSDP (FSDP1, GPU only) wrapping the HF model with one unit per decoder layer.

    Args:
        layer_classes_from: a model directory or hub id whose config gives the decoder-layer classes up
            front; None (or unavailable offline): taken from the loaded model in ``configure_model``.
        mixed_precision: ``{param_dtype, reduce_dtype, buffer_dtype}`` names for FSDP's
            ``MixedPrecision`` (e.g. bf16 compute, fp32 gradient reduction); None: Lightning's default for
            the trainer precision.
        master_dtype: dtype of the sharded parameters the optimiser updates (``float32``: fp32 master
            weights even when ``model.dtype`` is bfloat16); None keeps the loaded dtype.
        activation_checkpointing: checkpoint each decoder layer (:func:`apply_activation_checkpointing`).
        **kwargs: Lightning ``FSDPStrategy`` arguments (``sharding_strategy``, ``state_dict_type``,
            ``cpu_offload``, ``limit_all_gathers``, ...).
    """

    def __init__(self, layer_classes_from: str | None = None, mixed_precision: dict[str, str] | None = None,
                 master_dtype: str | None = "float32", activation_checkpointing: bool = False, **kwargs: Any) -> None:
        from torch.distributed.fsdp import MixedPrecision

        mp = MixedPrecision(**_dtypes(mixed_precision)) if mixed_precision else None
        super().__init__(mixed_precision=mp, **kwargs)
        self._init_sharding(layer_classes_from, master_dtype, activation_checkpointing)

    def setup_environment(self) -> None:
        if self.root_device.type != "cuda":
            raise ValueError("trainer=fsdp (FSDP1) needs CUDA GPUs; on CPU use trainer=fsdp2_cpu (FSDP2 over gloo)")
        super().setup_environment()

    def wrap_policy(self, model: torch.nn.Module | None = None):
        """FSDP's ``ModuleWrapPolicy`` over the decoder-layer classes (from the config, else from ``model``)."""
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = self.layer_classes if self.layer_classes is not None else decoder_layer_classes(model)
        return ModuleWrapPolicy(set(classes))

    def shard_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap the HF model: one FSDP unit per decoder layer, the model itself the root (called in ``configure_model``)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        classes = self._prepare(model, checkpointing=False)  # checkpointing goes inside the units, after wrapping
        kwargs = {k: v for k, v in self.kwargs.items() if k != "auto_wrap_policy"}
        wrapped = FullyShardedDataParallel(model, auto_wrap_policy=self.wrap_policy(), cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=self.root_device.index,
                                           **kwargs)
        if self.activation_checkpointing:
            apply_activation_checkpointing(wrapped, set(classes))
        return wrapped

    @staticmethod
    def clip_gradients_of(model: torch.nn.Module, value: float, algorithm: str) -> None:
        """Clip through the FSDP root (the norm over all shards), which Lightning's FSDP precision plugin refuses."""
        if algorithm == "norm":
            model.clip_grad_norm_(value)
        else:
            torch.nn.utils.clip_grad_value_(model.parameters(), value)


class FSDP2(_Sharding, ModelParallelStrategy):
    """FSDP2 (``fully_shard`` per decoder layer, then the root) through Lightning's ``ModelParallelStrategy``.

    Pure data parallelism over all ranks (tensor parallel size 1). Runs on GPUs (NCCL) and on CPU (gloo).

    Args:
        mixed_precision: ``{param_dtype, reduce_dtype, output_dtype}`` names for FSDP2's
            ``MixedPrecisionPolicy``; None: compute in the parameters' dtype.
        reshard_after_forward: free the gathered layer after its forward (ZeRO-3); False keeps it until
            the backward (ZeRO-2-like, more memory, less communication).
        layer_classes_from, master_dtype, activation_checkpointing: as :class:`FSDP`.
        **kwargs: Lightning ``ModelParallelStrategy`` arguments (``save_distributed_checkpoint``, ``timeout``).
    """

    def __init__(self, layer_classes_from: str | None = None, mixed_precision: dict[str, str] | None = None,
                 master_dtype: str | None = "float32", activation_checkpointing: bool = False,
                 reshard_after_forward: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_sharding(layer_classes_from, master_dtype, activation_checkpointing)
        self.mp_dtypes = _dtypes(mixed_precision)
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank is a data-parallel replica
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """``fully_shard`` each decoder layer, then the model (called in ``configure_model``)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        classes = self._prepare(model)
        kwargs = {"mesh": self.device_mesh["data_parallel"], "reshard_after_forward": self.reshard_after_forward,
                  "mp_policy": MixedPrecisionPolicy(**self.mp_dtypes)}
        for layer in [m for m in model.modules() if isinstance(m, classes)]:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model
