r"""Supervised fine-tuning on whatever targets the data module draws.

One module serves SFT (reference targets), the TMS student (trajectory-mixture targets),
Self-SFT and Final-SFT (buffer targets with α = 0): the objective is always the plain token NLL

.. math:: \mathcal{L}(\theta) = -\frac{1}{\sum_b |\tilde y_b|}\sum_b \sum_i \log \pi_\theta(\tilde y_{b,i} \mid x_b, \tilde y_{b,<i})

over the completion tokens of the batch (eq. 3.1 / 5.3); only the target source differs.
"""
from __future__ import annotations

import torch

from tms.losses import masked_nll
from tms.methods.base import CausalLMModule


class SFTModule(CausalLMModule):
    """Masked token-level NLL on prompt + target batches (see :mod:`tms.data.datamodule`)."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.forward_logits(batch["input_ids"], batch["attention_mask"])
        loss, n_tokens = masked_nll(logits, batch["labels"])
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
        self.log("train/completion_tokens", n_tokens.float(), on_step=True, on_epoch=False, reduce_fx="sum")
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.forward_logits(batch["input_ids"], batch["attention_mask"])
        loss, _ = masked_nll(logits, batch["labels"])
        self.log("val/nll_token_batch_mean", loss, on_epoch=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])
