"""What every method module shares: the HF model, optimiser/scheduler wiring, HF export, NaN guard."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from tms.core.io import atomic_dir
from tms.data.packing import is_packed, sequences_in
from tms.models.loading import load_model
from tms.models.lora import ADAPTER_DIR, LoraSettings, apply_lora, merged_state_dict, save_adapter
from tms.models.strategies import full_state_dict
from tms.models.varlen import packed_attention, packed_kwargs
from tms.objectives.head_logprobs import model_token_logprobs
from tms.training.numerics import NonFiniteGuard
from tms.training.optim import build_optimizer


class CausalLMModule(L.LightningModule):
    """Holds a Hugging Face causal LM loaded from ``model_path``.

    Args:
        model_path: hub id or local directory (θ0 for every method).
        optimizer: ``_partial_`` optimiser factory, called with the trainable parameters.
        scheduler: ``_partial_`` scheduler factory ``(optimizer, total_steps=N)`` or None; stepped
            every optimiser step.
        model_kwargs: passed to :func:`tms.models.loading.load_model` (dtype, attn_implementation, ...).
        gradient_checkpointing: trade compute for memory on large models.
        logprob_chunk: positions projected through the LM head at a time when computing token log-probs
            (:mod:`tms.objectives.head_logprobs`: no ``[B, L, V]`` float32 logits); None: the full logits.
        logprob_impl: ``chunked`` or ``liger`` (Liger's fused linear cross-entropy, CUDA) for that path.
        lora: LoRA adapters (:mod:`tms.models.lora`, ``model.lora``): only they are trained, every export is still a
            plain merged HF model; None: full fine-tuning.
        fused_optimizer: let :func:`~tms.training.optim.build_optimizer` pick torch's fused Adam / AdamW kernel
            (``model.fused_optimizer``); False: the optimiser exactly as the config builds it.
    """

    def __init__(self, model_path: str, optimizer: Callable, scheduler: Callable | None = None,
                 model_kwargs: dict[str, Any] | None = None, gradient_checkpointing: bool = False,
                 logprob_chunk: int | None = None, logprob_impl: str = "chunked",
                 lora: LoraSettings | None = None, fused_optimizer: bool = True) -> None:
        super().__init__()
        self.model_path = str(model_path)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model_kwargs = dict(model_kwargs or {})
        self.gradient_checkpointing = gradient_checkpointing
        self.logprob_chunk = int(logprob_chunk) if logprob_chunk else None
        self.logprob_impl = str(logprob_impl)
        self.lora = lora
        self.fused_optimizer = bool(fused_optimizer)
        self.model = None
        self._peft: list = []  # the PeftModel around self.model (LoRA), kept out of the module tree

    @property
    def peft_model(self):
        """The ``peft.PeftModel`` wrapping :attr:`model` when LoRA is on (its adapter switches and export), else None."""
        return self._peft[0] if self._peft else None

    def configure_model(self) -> None:
        """Load the model lazily (once), so that sharded strategies can wrap it; inject the LoRA adapters first."""
        if self.model is not None:
            return
        self.model = load_model(self.model_path, **self.model_kwargs)
        self.model.config.use_cache = False
        self.model.train()  # from_pretrained returns the model in eval mode
        if self.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:  # the HF model itself is trained: its target layers become LoRA layers, the rest frozen
            self._peft = [apply_lora(self.model, self.lora)]
        # -- sharding hook (tms.models.strategies): FSDP / FSDP2 wrap the decoder layers of the loaded model here --
        shard = getattr(self._trainer.strategy, "shard_module", None) if self._trainer is not None else None
        if shard is not None:
            self.model = shard(self.model)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping (through :meth:`clip_gradients`), or the sharding strategy's (FSDP clips through its
        root module)."""
        clip = getattr(self.trainer.strategy, "clip_gradients_of", None)
        if clip is not None and gradient_clip_val:
            clip(self.model, gradient_clip_val, gradient_clip_algorithm or "norm")
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, also for the fused AdamW (:func:`~tms.training.optim.build_optimizer`) under
        ``bf16-mixed``: Lightning's ``MixedPrecision`` plugin refuses to clip for every optimiser that unscales inside
        its step, grad scaler or not, and bf16 (no scaler) scales nothing, so its gradients are clipped as they are.
        Automatic optimisation (SFT) and RL's manual steps both clip here."""
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")
            return
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def batch_logprobs(self, batch: dict[str, torch.Tensor], model=None, temperature: float = 1.0,
                       entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(logp, mask, entropy)`` of the batch's labelled tokens under ``model`` (default: the trained one), through
        :func:`~tms.objectives.head_logprobs.model_token_logprobs` with this module's ``logprob_chunk``.

        A packed batch (:mod:`tms.data.packing`, ``sft.packing``) runs as one row without an attention mask, its
        attention kept within each sequence (:func:`tms.models.varlen.packed_attention`); ``logp`` and ``mask`` are
        then ``[1, N-1]``."""
        model = self.model if model is None else model
        if not is_packed(batch):
            return model_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], temperature,
                                        self.logprob_chunk, entropy, self.logprob_impl)
        forward = {"position_ids": batch["position_ids"], **packed_kwargs(batch["cu_seq_lens"], batch["max_length"])}
        with packed_attention(model):
            return model_token_logprobs(model, batch["input_ids"], None, batch["labels"], temperature, self.logprob_chunk,
                                        entropy, self.logprob_impl, forward_kwargs=forward)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None  # 16-mixed: clipping must unscale
        opt = build_optimizer(self.optimizer_factory, params, fuse=self.fused_optimizer and not scaled)
        if self.scheduler_factory is None:
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        sched = self.scheduler_factory(opt, total_steps=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop on a non-finite loss instead of training on NaN (the step number is in the message).

        Under a trainer with :class:`~tms.training.numerics.NonFiniteGuard` the guard raises, after saving a
        debug checkpoint with the offending batch.
        """

        guard = next((c for c in self.trainer.callbacks if isinstance(c, NonFiniteGuard)), None) if self._trainer else None
        if guard is not None:
            guard.check(self.trainer, "training loss", loss.detach())
        elif not torch.isfinite(loss).all():
            raise FloatingPointError(f"non-finite training loss {loss.item()} at global step {self.global_step}")

    @torch.no_grad()
    def reference_nll(self, loader) -> dict[str, float]:
        r"""Held-out reference NLL over ``loader`` (the PLD estimate, eq. 4.2).

        Returns ``pld`` = :math:`-\frac{1}{|D|}\sum_{(x,y^*)} \log\pi(y^*|x)` (per sequence) and
        ``nll_token`` (per completion token), summed across ranks.
        """
        was_training = self.model.training
        self.model.eval()
        acc = torch.zeros(3, dtype=torch.float64, device=self.device)
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            logp, mask, _ = self.batch_logprobs(batch)
            acc += torch.stack([-logp.sum().double(), torch.tensor(float(sequences_in(batch)), device=self.device,
                                dtype=torch.float64), mask.sum().double()])
        if self._trainer is not None and self.trainer.world_size > 1:
            acc = self.trainer.strategy.reduce(acc, reduce_op="sum")
        self.model.train(was_training)
        nll, n_seq, n_tok = (float(v) for v in acc)
        return {"pld": nll / max(n_seq, 1.0), "nll_token": nll / max(n_tok, 1.0)}

    def export_hf(self, out_dir: str | Path, tokenizer) -> None:
        """Save the current weights as an HF directory (rank 0 writes; every rank must call it).

        Under a sharding strategy the full state dict is gathered to rank 0 first (collective). With LoRA the
        directory is still a plain HF model: the adapters merged into a copy of the weights
        (:func:`~tms.models.lora.merged_state_dict`; the training model is not touched), and with
        ``lora.save_adapters`` the adapter alone in ``<out_dir>/adapter``.
        """

        state = full_state_dict(self.trainer.strategy, self.model)  # None unless the parameters are sharded
        if self.trainer.is_global_zero:
            with atomic_dir(out_dir) as tmp:
                weights = merged_state_dict(self.model, state) if self.lora is not None else state
                self.model.save_pretrained(str(tmp), safe_serialization=True,
                                           **({"state_dict": weights} if weights is not None else {}))
                tokenizer.save_pretrained(str(tmp))
                if self.lora is not None and self.lora.save_adapters:
                    save_adapter(self.peft_model, Path(tmp) / ADAPTER_DIR, state)
        self.trainer.strategy.barrier("export_hf")
