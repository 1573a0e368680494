"""The RL baselines: rewards, the EMA baseline state, one-step updates, micro-batching, in-process runs."""
import csv
import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import compose
from tms.data.tasks.base import Example, Task
from tms.core.io import read_json
from tms.methods.rl import RLModule, Rollout
from tests.helpers import Crash, assert_resumed_to_the_same_model, crash_at_step, rl_config
from tms.core.errors import ConfigError
from tms.methods.rl_config import reward_summary
from tms.methods.rewards import CombinedReward, FormatReward, VerifierReward
from tms.toy.tasks import ToyTask


class GradedTask(Task):
    """A task whose verifier returns the float in the completion (a graded judge)."""

    name = "graded"

    def load_split(self, split):
        return []

    def extract_answer(self, completion):
        return completion.strip() or None

    def verify(self, completion, answer):
        return float(completion)


def lengths_reward(completions, examples, task):
    """A dense test reward (completion length), so that no group has equal rewards."""
    return [float(len(c)) for c in completions]


# ---------------------------------------------------------------- rewards


def test_verifier_and_format_rewards_by_hand():
    task = ToyTask("sum", n_train=1, n_val=0, n_test=0)
    ex = Example(id="x", prompt="sum 10 20 30", reference="10+20=30 30+30=60 answer 60", answer="60")
    completions = ["10+20=30 30+30=60 answer 60", "add 10 20 is 30 so 59", "no number here", ""]
    assert VerifierReward()(completions, [ex] * 4, task) == [1.0, 0.0, 0.0, 0.0]
    assert FormatReward()(completions, [ex] * 4, task) == [1.0, 1.0, 0.0, 0.0]
    combined = CombinedReward({"correct": VerifierReward(), "format": FormatReward()}, weights={"format": 0.1})
    assert combined(completions, [ex] * 4, task) == pytest.approx([1.1, 0.1, 0.0, 0.0])
    graded = GradedTask()
    exs = [ex] * 3
    assert VerifierReward()(["1.0", "0.7", "0.2"], exs, graded) == [1.0, 0.0, 0.0]
    assert VerifierReward(threshold=0.5)(["1.0", "0.7", "0.2"], exs, graded) == [1.0, 1.0, 0.0]
    assert VerifierReward(binary=False)(["1.0", "0.7", "0.2"], exs, graded) == pytest.approx([1.0, 0.7, 0.2])
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        VerifierReward()(["a", "b"], [ex], task)
    with pytest.raises(ValueError, match="name no term"):
        CombinedReward({"correct": VerifierReward()}, weights={"fromat": 0.1})
    with pytest.raises(ValueError, match="threshold"):
        VerifierReward(threshold=1.5)


def test_reward_is_a_hydra_target():
    from hydra.utils import instantiate

    node = {"_target_": "tms.methods.rewards.CombinedReward", "weights": {"format": 0.5},
            "terms": {"correct": {"_target_": "tms.methods.rewards.VerifierReward"},
                      "format": {"_target_": "tms.methods.rewards.FormatReward"}}}
    reward = instantiate(node)
    ex = Example(id="x", prompt="sum 1 2 3", reference="", answer="6")
    assert reward(["answer 6", "answer 7"], [ex, ex], ToyTask("sum", 1, 0, 0)) == [1.5, 0.5]


def test_rl_defaults_live_only_in_the_method_config():
    """RLConfig is the schema without defaults: an rl block missing a key is refused, naming it."""
    import dataclasses

    from tms.methods.rl_config import RLConfig

    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(RLConfig))
    block = rl_config().__dict__
    with pytest.raises(ConfigError, match=r"^rl.beta: missing .*conf/method/grpo.yaml"):
        RLConfig.from_config({k: v for k, v in block.items() if k != "beta"})


def test_rl_config_validates_and_names_the_key():
    with pytest.raises(ConfigError, match="rl.baseline"):
        rl_config(baseline="ppo")
    with pytest.raises(ConfigError, match="rl.num_generations"):
        rl_config(baseline="group", num_generations=1)
    rl_config(baseline="ema", num_generations=1)  # REINFORCE needs no group
    with pytest.raises(ConfigError, match="rl.loss_aggregation"):
        rl_config(loss_aggregation="sum")
    assert reward_summary([0.0] * 8 + [1.0, 1.0]) == {"rollouts": 10, "fraction": 0.2, "first_mean": 0.0, "last_mean": 1.0}


def test_rl_learning_rate_defaults_to_a_fraction_of_the_sft_lr():
    from tms.methods.rl_config import rl_learning_rate

    cfg = compose(["method=grpo", "sft.optimizer.lr=2e-5"])
    assert rl_learning_rate(cfg) == pytest.approx(0.1 * 2e-5)
    assert rl_learning_rate(compose(["method=reinforce", "rl.lr=3e-6"])) == pytest.approx(3e-6)


# ---------------------------------------------------------------- prompt-only data


def test_prompt_mode_yields_each_index_once_per_epoch_repeated(smoke_base):
    from tms.data.datamodule import EpochSampler, PostTrainDataModule
    from tms.models.loading import load_tokenizer

    dm = PostTrainDataModule(ToyTask("sum", n_train=10, n_val=0, n_test=0), batch_size=4, max_length=64, seed=3,
                             mode="prompts", batch_repeats=2).connect(load_tokenizer(smoke_base))
    for epoch in (0, 1):
        batches = [b["index"].tolist() for b in dm.prompt_dataloader(epoch)]
        assert [len(b) for b in batches] == [4, 4, 4, 4, 2, 2] and batches[0::2] == batches[1::2]
        assert sum(batches[0::2], []) == EpochSampler(10, 3, epoch).indices()
    assert dm.steps_per_epoch() == 6 and dm.mixture_counts == {}


# ---------------------------------------------------------------- EMA baseline state


def _module(path="unused", **rl):
    rl = {"num_generations": 4, "max_new_tokens": 8, **rl}
    return RLModule(path, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0), reward_fn=lengths_reward,
                    rl=rl_config(**rl), seed=0)


def test_ema_baseline_is_carried_across_steps_and_checkpointed():
    module = _module(baseline="ema", momentum=0.5)
    a1 = module.advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))  # b = 0.5 (first batch mean)
    torch.testing.assert_close(a1, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    a2 = module.advantages(torch.tensor([1.0, 1.0, 1.0, 1.0]))  # b = 0.5 * 0.5 + 0.5 * 1 = 0.75
    assert module.baseline == pytest.approx(0.75)
    torch.testing.assert_close(a2, torch.full((4,), 0.25))
    module.reward_history = [0.5, 1.0]
    module.rollout = Rollout(index=torch.tensor([3]), batch={"input_ids": torch.ones(4, 5, dtype=torch.long)},
                             rewards=torch.ones(4), advantages=a2, lengths=torch.full((4,), 2),
                             truncated=torch.zeros(4, dtype=torch.bool), uses=1)
    ckpt = {}
    module.on_save_checkpoint(ckpt)
    restored = _module(baseline="ema", momentum=0.5)
    restored.on_load_checkpoint(torch.load(_roundtrip(ckpt), weights_only=True))
    assert restored.baseline == pytest.approx(0.75) and restored.reward_history == [0.5, 1.0]
    assert restored.rollout.uses == 1 and torch.equal(restored.rollout.advantages, a2)
    module.advantages(torch.zeros(4))
    restored.advantages(torch.zeros(4))
    assert restored.baseline == module.baseline == pytest.approx(0.375)


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# ---------------------------------------------------------------- one optimisation step


def fit_steps(module, base, steps, prompts_per_step=4, callbacks=()):
    from tms.data.datamodule import PostTrainDataModule
    from tms.models.loading import load_tokenizer

    dm = PostTrainDataModule(ToyTask("sum", n_train=16, n_val=0, n_test=0), batch_size=prompts_per_step,
                             max_length=64, mode="prompts", batch_repeats=module.rl.num_iterations)
    dm.connect(load_tokenizer(base))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(module, datamodule=dm)
    return trainer


@pytest.mark.parametrize("rl", [dict(baseline="group"), dict(baseline="ema", beta=0.04),
                                dict(baseline="leave_one_out", num_iterations=2, loss_aggregation="sequence_mean")],
                         ids=["grpo", "reinforce-kl", "rloo-mu2"])
def test_one_step_changes_every_trainable_parameter(smoke_base, rl):
    from tms.models.loading import load_model

    before = {n: p.detach().clone() for n, p in load_model(smoke_base, dtype="float32").named_parameters()}
    module = _module(smoke_base, **rl)
    trainer = fit_steps(module, smoke_base, steps=rl.get("num_iterations", 1))
    assert trainer.global_step == rl.get("num_iterations", 1) and len(module.reward_history) == 1
    after = dict(module.model.named_parameters())
    assert set(after) == set(before)
    unchanged = [n for n, p in after.items() if p.requires_grad and torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters not updated by one step: {unchanged}"
    if rl.get("num_iterations", 1) == 2:
        assert module.rollout.uses == 2  # both steps trained on the same rollout


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_micro_batching_does_not_change_the_update(smoke_base, aggregation):
    """SGD(lr=1) update of one whole-batch step == the same step in micro-batches of 3 sequences."""
    updates = []
    for micro in (64, 3):
        module = RLModule(smoke_base, optimizer=functools.partial(torch.optim.SGD, lr=1.0), reward_fn=lengths_reward,
                          rl=rl_config(num_generations=4, max_new_tokens=8, micro_batch_size=micro,
                                      loss_aggregation=aggregation, gradient_clip_val=None), seed=0)
        fit_steps(module, smoke_base, steps=1)
        updates.append({n: p.detach().clone() for n, p in module.model.named_parameters()})
    for name, p in updates[0].items():
        torch.testing.assert_close(updates[1][name], p, rtol=1e-4, atol=1e-6, msg=name)


@torch.no_grad()
def slow_k3(policy, reference, batch):
    """Token mean over every completion token of the batch of k3 = e^(log π0 - log π) - (log π0 - log π) - 1,
    with both log-probabilities from a separate unpadded forward pass per sequence (temperature 1)."""
    total, count = 0.0, 0
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        ids, labels = ids[:n], labels[:n]
        lp_pi = policy(input_ids=ids[None]).logits[0].double().log_softmax(-1)
        lp_0 = reference(input_ids=ids[None]).logits[0].double().log_softmax(-1)
        for t in range(1, n):
            if labels[t] == -100:
                continue
            assert labels[t] == ids[t]
            d = float(lp_0[t - 1, ids[t]] - lp_pi[t - 1, ids[t]])
            total += math.exp(d) - d - 1
            count += 1
    assert count > 0
    return total / count


def test_logged_kl_matches_a_slow_reference_after_the_policy_moved(smoke_base, monkeypatch):
    """REINFORCE with β > 0 for 3 steps: the k3 KL to θ0 that each step logs (and returns), against the slow
    reference on that step's rollout with the weights the step started from. Step 1 starts at θ0 (KL 0); after
    the first update the policy has moved and the KL is positive."""
    from tms.models.loading import load_model

    starts, batches, returned, logged = [], [], [], []
    policy_step = RLModule.policy_step

    def recording(self, ro):
        starts.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        batches.append({k: v.detach().clone() for k, v in ro.batch.items()})
        stats = policy_step(self, ro)
        returned.append(float(stats["kl"]))
        return stats

    class Logged(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(float(trainer.callback_metrics["train/kl"]))

    monkeypatch.setattr(RLModule, "policy_step", recording)
    module = _module(smoke_base, baseline="ema", beta=0.04, micro_batch_size=5)
    fit_steps(module, smoke_base, steps=3, callbacks=[Logged()])
    assert len(starts) == len(logged) == 3
    reference = load_model(smoke_base, dtype="float32").eval()
    policy = load_model(smoke_base, dtype="float32").eval()
    want = []
    for start, batch in zip(starts, batches):
        policy.load_state_dict(start)
        want.append(slow_k3(policy, reference, batch))
    assert returned == pytest.approx(logged, rel=1e-6)
    assert logged == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert want[0] == pytest.approx(0.0, abs=1e-7)  # the first step starts from θ0
    assert all(torch.equal(v, starts[0][k]) for k, v in reference.state_dict().items() if k in starts[0])
    assert want[1] > 1e-4 and want[2] > 1e-4 and logged[1] > 1e-4 and logged[2] > 1e-4  # the policy has moved


# ---------------------------------------------------------------- the real configs, in-process


def _metrics(stage_dir):
    with open(stage_dir / "logs" / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("method,overrides", [
    ("grpo", ["rl.beta=0.04"]),
    ("reinforce", ["rl.reward._target_=tms.methods.rewards.FormatReward", "~rl.reward.threshold"]),
])
def test_rl_method_runs_in_process_and_saves_a_model(smoke_cache, tmp_path, method, overrides):
    """GRPO through the whole pipeline (``python train.py method=grpo``), REINFORCE through its stage only."""
    from tms.models.loading import load_model
    from tms.pipeline import run
    from tms.stages.base_model import resolve_base
    from tms.stages.common import final_checkpoint

    cfg = compose(["experiment=smoke", f"method={method}", f"cache_dir={smoke_cache}", "rl.max_steps=3",
                   "rl.num_generations=4", "rl.prompts_per_step=8", "trainer.log_every_n_steps=1", *overrides])
    if method == "grpo":
        results = run(cfg, tmp_path)
        assert set(results["rows"]) >= {"base", "grpo"}
        stage_dir = tmp_path.joinpath(read_json(tmp_path / "pipeline.json")["stages"]["rl"]).resolve()
        model_dir = (tmp_path / "model").resolve()
    else:
        from tms.stages.rl import run_rl

        stage = run_rl(cfg, resolve_base(cfg))
        stage_dir, model_dir = stage.dir, Path(final_checkpoint(stage).path)
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    load_model(str(model_dir), dtype="float32")
    info = read_json(stage_dir / "manifest.json")["info"]
    assert info["global_steps"] == 3 and info["trajectory"]["checkpoints"]["1"]["step"] == 3
    rows = [r for r in _metrics(stage_dir) if r.get("train/reward_mean")]
    assert len(rows) == 3 and len(read_json(stage_dir / "rewards.json")["per_rollout"]) == 3
    for key in ("train/reward_std", "train/frac_reward_zero_std", "train/completion_length", "train/clip_fraction",
                "train/entropy", "train/loss"):
        assert rows[0].get(key) not in (None, ""), key
    if method == "grpo":  # logged through the real config; step 1 starts at θ0, so the reference is θ0 itself
        # (its value once the policy has moved: test_logged_kl_matches_a_slow_reference_after_the_policy_moved)
        assert all(r["train/kl"] not in (None, "") for r in rows)
        assert float(rows[0]["train/kl"]) == pytest.approx(0.0, abs=1e-6)
    else:
        assert float(rows[-1]["train/baseline"]) > 0  # format reward: most samples contain an integer


def test_vllm_sync_is_refused_with_the_option_name(smoke_cache):
    from tms.stages.rl import run_rl
    from tms.stages.base_model import resolve_base

    cfg = compose(["experiment=smoke", "method=grpo", f"cache_dir={smoke_cache}", "rl.vllm_sync=true"])
    with pytest.raises(NotImplementedError, match="rl.vllm_sync"):
        run_rl(cfg, resolve_base(cfg))


def test_rl_killed_mid_training_resumes_to_the_same_model(smoke_base, tmp_path, monkeypatch):
    """A crash after rollout 2 of 4 and a re-run: the stage resumes from Lightning's last.ckpt (optimiser, scheduler,
    EMA baseline, RNG, data position; rollouts seeded by (seed, step)) and ends with the uninterrupted run's weights
    and per-rollout rewards, bit for bit."""

    from tms.methods.rl import RLModule
    from tms.stages.rl import run_rl
    from tms.stages.common import ModelRef

    base = ModelRef(smoke_base, {"path": "smoke"})
    common = ["experiment=smoke", "method=reinforce", "rl.max_steps=4", "rl.num_generations=4", "rl.prompts_per_step=8",
              "trainer.checkpoint_every_n_steps=1", "trainer.log_every_n_steps=1",
              "rl.reward._target_=tms.methods.rewards.FormatReward", "~rl.reward.threshold"]  # non-zero rewards: real updates
    full_cfg = compose([*common, f"cache_dir={tmp_path / 'full'}"])
    full = run_rl(full_cfg, base)

    cfg = compose([*common, f"cache_dir={tmp_path / 'crash'}"])
    undo = crash_at_step(monkeypatch, RLModule, 2, "rollout")
    with pytest.raises(Crash):
        run_rl(cfg, base)
    partial = next((tmp_path / "crash" / "rl").glob("*.partial"))
    assert (partial / "lightning" / "last.ckpt").is_file()
    undo()
    resumed = run_rl(cfg, base)
    assert_resumed_to_the_same_model(full, resumed, smoke_base)  # the policy moved
    rewards = read_json(full.dir / "rewards.json")["per_rollout"]
    assert len(rewards) == 4 and any(r > 0 for r in rewards)
    assert read_json(resumed.dir / "rewards.json")["per_rollout"] == read_json(full.dir / "rewards.json")["per_rollout"]
