"""Stop on a non-finite loss or gradient instead of training on NaN, and keep the evidence.

:class:`NonFiniteGuard` checks the loss before every backward pass and the total gradient norm
before every optimiser step (before clipping, which would hide an infinite norm). On a NaN or
infinity it writes a debug checkpoint ``<stage dir>/debug/nonfinite-step<N>.ckpt`` (the full
training state as it was before the step, plus the offending micro-batch under the ``nonfinite``
key) and raises :class:`FloatingPointError` naming the step and that file. Resuming from the
debug checkpoint replays the offending batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch


def total_grad_norm(params) -> torch.Tensor:
    """L2 norm of all gradients of ``params`` (the local shards for sharded parameters)."""
    grads = [p.grad for p in params if p.grad is not None]
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


def to_cpu(batch: Any) -> Any:
    """A detached CPU copy of a (nested) batch of tensors."""
    if isinstance(batch, torch.Tensor):
        return batch.detach().cpu()
    if isinstance(batch, dict):
        return {k: to_cpu(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_cpu(v) for v in batch)
    return batch


class NonFiniteGuard(L.Callback):
    """Raise on a non-finite loss or gradient norm after saving a debug checkpoint (see the module docstring)."""

    def __init__(self) -> None:
        self._batch: Any = None
        self._batch_idx = -1
        self._failure: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module, loss: torch.Tensor) -> None:
        self.check(trainer, "training loss", loss.detach())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling: the scaler skips steps with inf gradients by design
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.check(trainer, "gradient norm", total_grad_norm(params))

    def check(self, trainer: L.Trainer, what: str, value: torch.Tensor) -> None:
        """Raise (on every rank) if ``value`` is not finite on any rank."""
        bad = not bool(torch.isfinite(value).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            self.fail(trainer, what, value)

    def fail(self, trainer: L.Trainer, what: str, value: torch.Tensor) -> None:
        step = int(trainer.global_step)
        path = Path(trainer.default_root_dir) / "debug" / f"nonfinite-step{step}.ckpt"
        shown = value.item() if value.numel() == 1 else value
        self._failure = {"what": what, "value": str(shown), "global_step": step, "epoch": int(trainer.current_epoch),
                         "batch_idx": int(self._batch_idx), "batch": to_cpu(self._batch)}
        trainer.save_checkpoint(path)
        raise FloatingPointError(
            f"non-finite {what} ({shown}) at global step {step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}); training state and the batch saved to {path} (key 'nonfinite'). Lower the "
            "learning rate or check the data of that batch, then re-run the same command: training resumes from the "
            "last good lightning/last.ckpt")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._failure is not None:
            checkpoint["nonfinite"] = self._failure
