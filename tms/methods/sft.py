r"""Supervised fine-tuning on whatever targets the data module draws.

One module serves SFT (reference targets), the TMS student (trajectory-mixture targets),
Self-SFT and Final-SFT (buffer targets with α = 0): the objective is always the plain token NLL
of one optimiser step,

.. math:: \mathcal{L}(\theta) = -\frac{1}{\sum_b |\tilde y_b|}\sum_b \sum_i \log \pi_\theta(\tilde y_{b,i} \mid x_b, \tilde y_{b,<i})

over the completion tokens of *all* the examples of the step — every micro-batch of the accumulation
window on every rank (eq. 3.1 / 5.3; :func:`tms.objectives.nll.step_token_mean`) — so the update does not depend
on how a step is split into micro-batches or ranks, and a token weighs the same in a short harvested
completion as in a long reference. Only the target source differs between the methods.
"""
from __future__ import annotations

import torch

from tms.data.packing import sequences_in
from tms.objectives.nll import step_token_mean
from tms.methods.base import CausalLMModule
from tms.training.callbacks import logs_this_step


class SFTModule(CausalLMModule):
    """Step-level token-mean NLL on prompt + target batches (see :mod:`tms.data.datamodule`).

    Batches come from :class:`~tms.data.windows.WindowedDataLoader` (``window_tokens``, ``window_last``).
    A plain batch without them is accepted only without gradient accumulation (its own tokens are then the
    window's). Logged at the optimiser steps the logger writes (``trainer.log_every_n_steps``; the values of the steps
    in between, which Lightning would discard, are not computed): ``train/loss`` (:math:`\mathcal{L}` above, over all
    ranks), ``train/completion_tokens`` (the step's completion tokens, all ranks) and ``train/lr``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._step_nll: torch.Tensor | None = None  # summed NLL of the current window's micro-batches so far

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logp, mask, _ = self.batch_logprobs(batch)
        nll_sum, n_tokens = -logp.sum(), mask.sum()  # S and n of tms.objectives.nll.masked_nll_sum
        accumulate, world = int(self.trainer.accumulate_grad_batches), int(self.trainer.world_size)
        if "window_tokens" not in batch and accumulate > 1:
            raise ValueError("SFTModule: with gradient accumulation the batches must carry 'window_tokens' "
                             "(use tms.data.windows.WindowedDataLoader / PostTrainDataModule)")
        local = batch.get("window_tokens", n_tokens).to(self.device)
        step_tokens = self.trainer.strategy.reduce(local.double(), reduce_op="sum") if world > 1 else local
        loss = step_token_mean(nll_sum, step_tokens, accumulate, world)
        self.check_finite(loss)
        part = nll_sum.detach().double()
        self._step_nll = part if self._step_nll is None else self._step_nll + part
        if batch.get("window_last", True):
            step_nll, self._step_nll = self._step_nll, None
            if not logs_this_step(self.trainer):  # Lightning would drop this step's values: skip them and the reduce
                return loss
            total = self.trainer.strategy.reduce(step_nll, reduce_op="sum") if world > 1 else step_nll
            self.log("train/loss", (total / step_tokens).float(), prog_bar=True, on_step=True, on_epoch=False,
                     batch_size=sequences_in(batch))
            self.log("train/completion_tokens", step_tokens.float(), on_step=True, on_epoch=False)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss
