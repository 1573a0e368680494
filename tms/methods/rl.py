r"""On-policy RL baselines with verifiable rewards: GRPO and REINFORCE (paper §3.1, appendix F.2).

Both maximise :math:`\mathbb{E}_{x}\,\mathbb{E}_{y \sim \pi_\theta(\cdot|x)}[r(x, y)]
- \beta\,\mathrm{KL}(\pi_\theta \,\|\, \pi_{\theta_0})` with one rollout / reward / loss code path:

1. **Rollout.** A batch of P training prompts; G completions each, sampled from the *current*
   weights (the HF backend wraps the training model), seeded from ``(seed, global_step, rank)``.
2. **Reward.** ``reward_fn(completions, examples, task)`` (:mod:`tms.methods.rewards`), binary by default.
3. **Advantages** :math:`A_i` (per sequence), by ``rl.baseline``:
   ``group``  (GRPO)  :math:`(r_i - \bar r_{g(i)}) / (\operatorname{std}_{g(i)} + \epsilon)`, or Dr. GRPO's
   :math:`r_i - \bar r_{g(i)}` with ``scale_rewards=false``;
   ``ema``    (REINFORCE)  :math:`r_i - b`, :math:`b \leftarrow m b + (1-m)\,\bar r_{\text{batch}}` carried across steps;
   ``leave_one_out``  (RLOO)  :math:`r_i - \frac{1}{G-1}\sum_{j \ne i} r_j`.
4. **Loss** (:func:`tms.objectives.policy_gradient.grpo_loss`), ``num_iterations`` = μ optimiser steps on each rollout:

   .. math:: \mathcal{L} = \operatorname{agg}\Big(-\min\big(\rho_{bt} A_b,\ \operatorname{clip}(\rho_{bt}, 1-\epsilon, 1+\epsilon_h) A_b\big)
             + \beta\, k_3(\pi_\theta, \pi_{\theta_0})_{bt}\Big), \qquad \rho_{bt} = \frac{\pi_\theta(y_{bt})}{\pi_{\text{old}}(y_{bt})}

   with :math:`\pi_{\text{old}}` the weights that sampled the rollout. With μ = 1 the ratio is exactly 1
   and the gradient is the vanilla policy gradient :math:`-\operatorname{agg}(A_b \nabla \log\pi_\theta(y_{bt}))`;
   REINFORCE is this loss with its own advantages. Log-probabilities use the logits divided by the
   sampling temperature (the distribution the completions were drawn from).

One ``training_step`` is one optimiser step: the prompt loader repeats each index batch μ times
(``PostTrainDataModule(mode="prompts", batch_repeats=μ)``) and the module samples a new rollout
when the current one has been used μ times, so ``global_step``, ``max_steps``, the scheduler and the
trajectory checkpoints all count optimiser steps. Optimisation is manual: the rollout's P·G sequences
go through ``micro_batch_size``-row forward/backward passes whose losses are weighted so that the
accumulated gradient equals that of the loss aggregated over the whole step on *every* rank
(``token_mean``: :math:`\frac{1}{N}\sum_{\text{ranks}}\sum_{b,t} m_{bt}\ell_{bt}` with ``N`` the completion
tokens of the step summed over ranks, as verl's ``agg_loss`` with a global token count; ``sequence_mean``:
the mean over all the step's sequences of their own token means), so the update does not depend on the
micro-batch size or the number of ranks; then the gradients are clipped and the optimiser and the
scheduler step.
The stage that runs it (:func:`run_rl`) lives in :mod:`tms.stages.rl`.

Logged every optimiser step under ``train/`` (the same names for CSV and W&B): ``loss``, ``clip_fraction``,
``entropy`` (of the sampling distribution, token mean), ``kl`` (k3 to θ0, token mean; when ``beta > 0`` or
``log_kl``), ``lr``; and per rollout: ``reward_mean``, ``reward_std``, ``frac_reward_zero_std`` (groups whose G
rewards are all equal, i.e. no GRPO signal), ``completion_length`` (tokens), ``completion_truncated`` (hit
``max_new_tokens``), ``advantage_abs_mean``, ``generation_tokens_per_s`` and ``baseline`` (EMA). With μ > 1
Lightning repeats a rollout's values on the steps that reuse it; :attr:`RLModule.reward_history` (and the
stage's ``rewards.json``) holds exactly one mean reward per rollout.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import torch

from tms.data.formatting import collate_right_padded
from tms.generation.base import SamplingParams
from tms.core.seeds import derive_seed
from tms.generation.hf import HFGenerator
from tms.objectives.nll import completion_mask
from tms.methods.base import CausalLMModule
from tms.methods.rl_config import RLConfig
from tms.models.loading import load_model
from tms.models.lora import LoraSettings, adapters_disabled
from tms.objectives.policy_gradient import (aggregate, ema_update, grpo_loss, group_advantages, kl_penalty_k3,
                           leave_one_out_advantages, reinforce_advantages)


ROLLOUT_COLUMNS = ["rollout", "prompt", "completion", "reward", "advantage", "tokens"]


@dataclasses.dataclass
class Rollout:
    """One rollout batch: P prompts × G completions, ordered by (prompt, sample).

    ``batch`` holds right-padded ``input_ids``/``attention_mask``/``labels`` ``[P·G, L]`` (labels -100
    off the completion); ``logp_old``/``logp_ref`` are ``[P·G, L-1]`` (``logp_old`` is filled by the
    first optimisation pass, which runs on exactly the sampling weights); ``uses`` counts the passes.
    """

    index: torch.Tensor
    batch: dict[str, torch.Tensor]
    rewards: torch.Tensor
    advantages: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    logp_old: torch.Tensor | None = None
    logp_ref: torch.Tensor | None = None
    uses: int = 0

    def state(self) -> dict[str, Any]:
        """Plain CPU tensors for the Lightning checkpoint (exact resume within a rollout)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["batch"] = {k: v.cpu() for k, v in self.batch.items()}
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "Rollout":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        moved["batch"] = {k: v.to(device) for k, v in state["batch"].items()}
        return cls(**moved)


class RLModule(CausalLMModule):
    """GRPO / REINFORCE on prompt-index batches from ``PostTrainDataModule(mode="prompts")``.

    Args (beyond :class:`~tms.methods.base.CausalLMModule`'s):
        reward_fn: ``(completions, examples, task) -> list[float]`` (see :mod:`tms.methods.rewards`).
        rl: the per-step hyperparameters.
        seed: base seed of the rollouts.

    The prompts, examples, task and tokenizer come from ``self.trainer.datamodule``. The EMA baseline,
    the per-rollout mean rewards (:attr:`reward_history`) and the current rollout are saved in Lightning
    checkpoints, so a resumed run continues exactly.
    """

    def __init__(self, model_path: str, optimizer: Callable, scheduler: Callable | None = None,
                 model_kwargs: dict[str, Any] | None = None, gradient_checkpointing: bool = False, *,
                 reward_fn: Callable, rl: RLConfig, seed: int = 0, logprob_chunk: int | None = None,
                 logprob_impl: str = "chunked", lora: LoraSettings | None = None, rollout_samples: int = 0,
                 rollout_every: int = 0, fused_optimizer: bool = True) -> None:
        super().__init__(model_path, optimizer, scheduler, model_kwargs, gradient_checkpointing, logprob_chunk,
                         logprob_impl, lora, fused_optimizer)
        # W&B table "rollouts": the first rollout_samples completions of every rollout_every-th rollout (0: none)
        self.rollout_samples, self.rollout_every = int(rollout_samples), int(rollout_every)
        self._sample_rows: list[list[Any]] = []
        self.automatic_optimization = False
        self.reward_fn, self.rl, self.seed = reward_fn, rl, int(seed)
        self.baseline: float | None = None
        self.reward_history: list[float] = []
        self.rollout: Rollout | None = None
        self._generation_seconds = 0.0
        self._ref: list = []  # the frozen θ0, kept out of the module tree: not trained, not checkpointed

    # -- models --------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """The policy (:meth:`CausalLMModule.configure_model`) and, when the KL needs it, the frozen θ0: a second copy
        of the model, except under LoRA, where θ0 is the policy with its adapters switched off (:meth:`reference_logprobs`)."""
        super().configure_model()
        if self.rl.needs_reference and not self._ref and self.lora is None:
            ref = load_model(self.model_path, **self.model_kwargs)
            ref.eval().requires_grad_(False)
            self._ref.append(ref)

    def _reference(self):
        ref = self._ref[0]
        if next(ref.parameters()).device != self.device:
            ref.to(self.device)
        return ref

    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, L-1]`` token log-probs of ``batch`` under θ0: the frozen copy, or (LoRA) the policy's own frozen base
        weights with the adapters disabled, in eval mode like the copy."""
        if self.lora is None:
            return self._token_logprobs_of(self._reference(), batch)
        with adapters_disabled(self.peft_model):
            return self._token_logprobs_of(self.model, batch)

    def _micro_batches(self, batch: dict[str, torch.Tensor]) -> Iterator[tuple[slice, int, dict[str, torch.Tensor]]]:
        """``(rows, width, micro-batch)`` with trailing padding columns cut (right padding: only pads)."""
        n = batch["input_ids"].shape[0]
        for start in range(0, n, self.rl.micro_batch_size):
            rows = slice(start, min(n, start + self.rl.micro_batch_size))
            width = int(batch["attention_mask"][rows].sum(dim=1).max())
            yield rows, width, {k: v[rows, :width] for k, v in batch.items()}

    # -- rollout -------------------------------------------------------------------------------
    def _global_mean(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.float().mean()
        if self._trainer is not None and self.trainer.world_size > 1:
            mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
        return mean

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Per-sequence advantages of ``rewards`` ``[P·G]`` for ``rl.baseline`` (updates the EMA baseline)."""
        G = self.rl.num_generations
        if self.rl.baseline == "group":
            return group_advantages(rewards, G, scale=self.rl.scale_rewards)
        if self.rl.baseline == "leave_one_out":
            return leave_one_out_advantages(rewards, G)
        self.baseline = float(ema_update(self.baseline, float(self._global_mean(rewards)), self.rl.momentum))
        return reinforce_advantages(rewards, self.baseline)

    @torch.no_grad()
    def make_rollout(self, index: torch.Tensor) -> Rollout:
        """Sample, score and tokenise G completions of each prompt in ``index`` with the current weights."""
        dm = self.trainer.datamodule
        idx = [int(i) for i in index.tolist()]
        prompts = [dm.train_prompts[i] for i in idx]
        sampling = SamplingParams(temperature=self.rl.temperature, top_p=self.rl.top_p, max_new_tokens=self.rl.max_new_tokens)
        generator = HFGenerator(self.model, dm.tokenizer, batch_size=self.rl.generation_batch_size)
        started = time.perf_counter()
        try:
            completions = generator.generate(prompts, self.rl.num_generations, sampling,
                                             seed=derive_seed(self.seed, self.global_step, self.global_rank))
        finally:
            self.model.train()  # generate() switches the model to eval mode
        self._generation_seconds = time.perf_counter() - started
        examples = [dm.train_examples[idx[c.prompt_index]] for c in completions]
        rewards = torch.tensor(self.reward_fn([c.text for c in completions], examples, dm.task),
                               dtype=torch.float32, device=self.device)
        batch = collate_right_padded([(list(prompts[c.prompt_index]) + list(c.token_ids), len(prompts[c.prompt_index]))
                                      for c in completions], int(dm.tokenizer.pad_token_id))
        rollout = Rollout(index=index.detach().cpu(), batch={k: v.to(self.device) for k, v in batch.items()},
                          rewards=rewards, advantages=self.advantages(rewards).to(self.device),
                          lengths=torch.tensor([c.num_tokens for c in completions], device=self.device),
                          truncated=torch.tensor([c.finish_reason == "length" for c in completions], device=self.device))
        if self.rl.needs_reference:
            rollout.logp_ref = self.reference_logprobs(rollout.batch)
        if self.rollout_samples > 0 and self.rollout_every > 0 and len(self.reward_history) % self.rollout_every == 0:
            self._sample_rows = [[len(self.reward_history), examples[i].prompt, c.text, float(rollout.rewards[i]),
                                  float(rollout.advantages[i]), c.num_tokens]
                                 for i, c in enumerate(completions[: self.rollout_samples])]
        return rollout

    def _logp_dtype(self) -> torch.dtype:
        """The dtype of :func:`~tms.objectives.nll.token_logprobs` for this model (float32; float64 for a float64 model)."""
        return torch.float64 if next(self.model.parameters()).dtype == torch.float64 else torch.float32

    def _token_logprobs_of(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, L-1]`` per-token log-probs of the completions under ``model`` (no grad, micro-batched)."""
        out = torch.zeros(batch["labels"][:, 1:].shape, device=self.device, dtype=self._logp_dtype())
        for rows, width, mb in self._micro_batches(batch):
            out[rows, : width - 1] = self.batch_logprobs(mb, model, self.rl.temperature)[0]
        return out

    def _log_rollout(self, ro: Rollout) -> None:
        grouped = ro.rewards.view(-1, self.rl.num_generations)
        mean = self._global_mean(ro.rewards)
        self.reward_history.append(float(mean))
        metrics = {
            "reward_mean": ro.rewards.mean(),
            "reward_std": ro.rewards.std() if ro.rewards.numel() > 1 else torch.zeros((), device=self.device),
            "frac_reward_zero_std": (grouped == grouped[:, :1]).all(dim=1).float().mean(),
            "completion_length": ro.lengths.float().mean(),
            "completion_truncated": ro.truncated.float().mean(),
            "advantage_abs_mean": ro.advantages.abs().mean(),
            "generation_tokens_per_s": ro.lengths.sum().float() / max(self._generation_seconds, 1e-9),
        }
        if self.rl.baseline == "ema":
            metrics["baseline"] = torch.tensor(self.baseline, device=self.device)
        self.log_dict({f"train/{k}": v.float() for k, v in metrics.items()}, on_step=True, on_epoch=False,
                      sync_dist=True, batch_size=int(ro.index.numel()))
        self.log("train/reward", mean, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        if self._sample_rows:  # loggers with tables (W&B); rank 0 logs its own rollout's completions
            if self._trainer is not None and hasattr(self.logger, "log_table"):
                self.logger.log_table(key="rollouts", columns=ROLLOUT_COLUMNS, data=self._sample_rows)
            self._sample_rows = []

    # -- optimisation --------------------------------------------------------------------------
    def policy_step(self, ro: Rollout) -> dict[str, torch.Tensor]:
        """One optimiser step on ``ro``: micro-batched forward/backward of the GRPO loss, clip, step."""
        rl = self.rl
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad(set_to_none=True)
        mask_all = completion_mask(ro.batch["labels"])
        n_tokens = mask_all.sum()
        units = n_tokens if rl.loss_aggregation == "token_mean" else mask_all.any(dim=1).sum()
        world = int(self.trainer.world_size) if self._trainer is not None else 1
        # the whole step's tokens (or sequences) over every rank; gradients are averaged over the ranks
        denom = (self.trainer.strategy.reduce(units.double(), reduce_op="sum") / world) if world > 1 else units.double()
        first = ro.logp_old is None
        if first:
            ro.logp_old = torch.zeros(mask_all.shape, device=self.device, dtype=self._logp_dtype())
        stats: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor, weight: torch.Tensor) -> None:
            stats[name] = stats.get(name, 0.0) + value.detach().float() * weight

        for rows, width, mb in self._micro_batches(ro.batch):
            logp, mask, entropy = self.batch_logprobs(mb, temperature=self.rl.temperature, entropy=True)
            if first:  # the sampling weights: π_old = π_θ here, so the ratio of this pass is exactly 1
                ro.logp_old[rows, : width - 1] = logp.detach()
            ref = ro.logp_ref[rows, : width - 1] if ro.logp_ref is not None else None
            loss, mb_stats = grpo_loss(logp, ro.logp_old[rows, : width - 1], ref if rl.beta > 0 else None,
                                       ro.advantages[rows], mask, rl.epsilon, rl.epsilon_high, rl.beta, rl.loss_aggregation)
            self.check_finite(loss)
            share = ((mask.sum() if rl.loss_aggregation == "token_mean" else mask.any(dim=1).sum()) / denom).to(loss.dtype)
            self.manual_backward(loss * share)
            token_share = mask.sum() / n_tokens
            add("loss", loss, share)
            add("clip_fraction", mb_stats["clip_fraction"], token_share)
            add("entropy", entropy, token_share)
            if ref is not None:
                kl = mb_stats.get("kl")
                add("kl", kl if kl is not None else aggregate(kl_penalty_k3(logp.detach(), ref, mask), mask, "token_mean"),
                    token_share)
        if rl.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=rl.gradient_clip_val, gradient_clip_algorithm="norm")
        stats["lr"] = torch.tensor(float(opt.optimizer.param_groups[0]["lr"]), device=self.device)
        opt.step()
        if sched is not None:
            sched.step()
        return stats

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        index = batch["index"]
        ro = self.rollout
        if ro is None or ro.uses >= self.rl.num_iterations or not torch.equal(ro.index, index.detach().cpu()):
            ro = self.rollout = self.make_rollout(index)
            self._log_rollout(ro)
        stats = self.policy_step(ro)
        ro.uses += 1
        self.log("train/loss", stats.pop("loss"), prog_bar=True, on_step=True, on_epoch=False, batch_size=int(index.numel()))
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=int(index.numel()))

    # -- state ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rl_state"] = {"baseline": self.baseline, "reward_history": list(self.reward_history),
                                  "rollout": None if self.rollout is None else self.rollout.state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("rl_state") or {}
        self.baseline = state.get("baseline")
        self.reward_history = list(state.get("reward_history", []))
        ro = state.get("rollout")
        self.rollout = None if ro is None else Rollout.from_state(ro, self.device)

