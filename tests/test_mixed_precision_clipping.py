"""Gradient clipping with the default fused AdamW under every Lightning precision a trainer config uses.

Lightning's ``MixedPrecision`` plugin refuses to clip for any optimiser that unscales inside its step (the fused
AdamW), even under ``bf16-mixed``, where nothing is scaled: ``trainer=gpu`` / ``trainer=ddp`` (bf16-mixed, clipping
at 1.0) would stop at the first step. tms clips bf16-mixed gradients itself and keeps fp16 (a grad scaler, which
must unscale before clipping) on the unfused optimiser. Checked on the CPU: the step runs and the gradient the
optimiser sees has the clipped norm."""
import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from tms.data.formatting import Collator
from tms.methods.sft import SFTModule

CLIP = 1e-3  # far below the gradient norm of a first step: clipping is always active


class Recording(SFTModule):
    """Records, after the module's clipping, the norm of the gradient the optimiser is about to apply."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.norms, self.fused = [], []

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad.float() for p in self.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        self.fused.append(bool(optimizer.defaults.get("fused")))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_clipping_works_with_the_fused_optimiser_under_each_precision(smoke_base, precision):
    module = Recording(smoke_base, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), scheduler=None)
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(3, 60, (12,), generator=g).tolist(), 4) for _ in range(8)]
    loader = torch.utils.data.DataLoader(items, batch_size=4, collate_fn=Collator(0))
    # fp16 AMP is a GPU setting (Lightning turns 16-mixed into bf16 on the CPU): its plugin with a CPU grad scaler
    # stands in for it, the same code path as trainer=gpu trainer.precision=16-mixed
    how = ({"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]} if precision == "16-mixed"
           else {"precision": precision})
    trainer = L.Trainer(accelerator="cpu", devices=1, **how, gradient_clip_val=CLIP, max_steps=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader)
    assert trainer.global_step == 2
    # fp16's grad scaler must unscale before clipping: its optimiser is the unfused one; the others are fused
    assert module.fused == [precision != "16-mixed"] * 2
    assert len(module.norms) == 2 and all(abs(n - CLIP) < 1e-2 * CLIP for n in module.norms), module.norms


def test_the_toy_trains_with_the_per_tensor_loop_and_other_models_fused(smoke_base):
    """``model.fused_optimizer``: the toy's stages build AdamW exactly as the config says (its results hang on float
    rounding); the others let build_optimizer fuse it. The choice is in the toy's training keys."""
    from tests.conftest import compose
    from tms.stages.common import module_kwargs, train_key

    toy, smol = compose([]), compose(["model=smollm2-135m"])
    assert module_kwargs(toy)["fused_optimizer"] is False and module_kwargs(smol)["fused_optimizer"] is True
    assert train_key(toy)["fused_optimizer"] is False and "fused_optimizer" not in train_key(smol)
    assert toy.model.build.pretrain.optimizer.fused is False  # θ0's pretraining too
    module = Recording(smoke_base, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), scheduler=None,
                       fused_optimizer=False)
    loader = torch.utils.data.DataLoader([([5, 6, 7, 8, 9, 10], 2)] * 4, batch_size=2, collate_fn=Collator(0))
    trainer = L.Trainer(accelerator="cpu", devices=1, gradient_clip_val=CLIP, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    assert module.fused == [False]
