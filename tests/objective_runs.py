"""One or two optimiser steps of SFT or RL on ragged completions, in float64 with plain SGD.

Used by tests/test_objective.py in-process (one process) and through ``torchrun`` (2 processes, DDP over gloo;
``python tests/objective_runs.py '<json args>'``). The update of a step must not depend on how the step's
examples are split into micro-batches and ranks (:func:`tms.objectives.nll.step_token_mean`, the RL module's global
token count), so every layout of the same global batch must end at the same weights.

Ragged on purpose: the references are 1 to ~60 tokens long, so per-micro-batch (or per-rank) token means
weigh tokens very differently from the token mean of the step.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script by torchrun
    sys.path.insert(0, str(REPO))

from tms.data.tasks.base import Example, Task  # noqa: E402
from tms.generation.base import Completion  # noqa: E402

N_TRAIN = 16  # two global batches of 8


class RaggedTask(Task):
    """Prompts ``sum a b``; references of 0 to 29 repeated words, so completions are 1 to ~60 tokens."""

    name = "ragged"

    def load_split(self, split):
        if split != "train":
            return []
        words = ["add", "is", "so", "answer", "12", "7", "+", "="]
        rows = []
        for i in range(N_TRAIN):
            n = (i * 7) % 30  # 0, 7, 14, ... : very different lengths within every batch
            ref = " ".join(words[(i + j) % len(words)] for j in range(n))
            rows.append(Example(id=f"r{i:02d}", prompt=f"sum {i} {2 * i + 1}", reference=ref, answer=str(3 * i + 1)))
        return rows

    def verify(self, completion, answer):
        return float(len(completion) % 3 == 0)  # a deterministic, mixed reward


class ScriptedGenerator:
    """Stands in for the HF generator in RL rollouts: G completions per prompt, a deterministic function of the
    prompt's tokens alone (so the rollout does not depend on the rank or the seed), of very different lengths."""

    def __init__(self, model, tokenizer, batch_size=None):
        self.tokenizer = tokenizer

    def generate(self, prompts, n, sampling, seed):
        out = []
        vocab = len(self.tokenizer) - 10
        for p, prompt in enumerate(prompts):
            h = sum((k + 1) * int(t) for k, t in enumerate(prompt))
            for k in range(n):
                length = 1 + (h + 11 * k) % 40
                ids = [5 + (h * (j + 3) + 7 * k) % vocab for j in range(length)]
                out.append(Completion(p, k, self.tokenizer.decode(ids), ids, "length"))
        return out


def run(base: str, mode: str, batch: int, acc: int, steps: int = 1, old_objective: bool = False) -> dict[str, torch.Tensor]:
    """Train ``steps`` optimiser steps; returns the final state dict (CPU float64) on rank 0, {} elsewhere.

    ``mode``: ``sft`` (``batch`` examples per micro-batch, ``acc`` micro-batches per step) or ``rl`` (GRPO,
    ``batch`` prompts per rank and step, ``acc`` = rollout rows per forward/backward, G = 4).
    ``old_objective``: SFT with each micro-batch's own token mean (the objective before this fix), to show
    that the comparison is sensitive to it.
    """
    import os

    import lightning as L

    from tms.data.datamodule import PostTrainDataModule
    from tms.objectives.nll import masked_nll
    from tms.methods.rl import RLModule
    from tests.helpers import rl_config
    from tms.methods.sft import SFTModule
    from tms.models.loading import load_tokenizer
    from tms.methods.rewards import VerifierReward

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tok = load_tokenizer(base)
    sgd = lambda params: torch.optim.SGD(params, lr=0.5)  # noqa: E731
    kwargs = {"model_kwargs": {"dtype": "float64"}}
    if mode == "sft":
        class OldSFT(SFTModule):
            def training_step(self, b, i):
                logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
                return masked_nll(logits, b["labels"])[0]

        module = (OldSFT if old_objective else SFTModule)(base, optimizer=sgd, **kwargs)
        dm = PostTrainDataModule(RaggedTask(), batch_size=batch, max_length=96, seed=0).connect(tok)
        accumulate = acc
    else:
        import tms.methods.rl as rl_module

        rl_module.HFGenerator = ScriptedGenerator
        module = RLModule(base, optimizer=sgd, reward_fn=VerifierReward(binary=False),
                          rl=rl_config(num_generations=4, micro_batch_size=acc, max_new_tokens=40, baseline="group"),
                          seed=0, **kwargs)
        dm = PostTrainDataModule(RaggedTask(), batch_size=batch, max_length=96, seed=0, mode="prompts").connect(tok)
        accumulate = 1
    strategy = "auto"
    if world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=strategy, max_steps=steps, max_epochs=1,
                        accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    if not trainer.is_global_zero:
        return {}
    return {k: v.detach().double().cpu().clone() for k, v in module.model.state_dict().items()}


if __name__ == "__main__":  # torchrun --nproc-per-node=2 tests/objective_runs.py '{"base": ..., "out": ...}'
    args = json.loads(sys.argv[1])
    out = args.pop("out")
    state = run(**args)
    if state:
        torch.save(state, out)
