"""Invalid configurations fail before any compute (before θ0 is built or loaded), in seconds, with a
:class:`~tms.core.errors.ConfigError` naming the key, and leave no stage directory in the cache."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, compose
from tests.helpers import invalid, listing
from tms.training.loop import RESERVED_TRAINER_KEYS
from tms.config.validate import validate
from tms.core.checks import optimizer_steps
from tms.core.errors import ConfigError


@pytest.mark.parametrize("overrides,match", [
    (["cache_reuse=sometimes"], r"^cache_reuse: must be one of"),
    # -- the target source, T, the data
    (["data.target_source.alpha=1.5"], r"^data.target_source.alpha"),
    (["data.target_source.alpha=-0.2"], r"^data.target_source.alpha"),
    (["data.target_source.alpha=nan"], r"^data.target_source.alpha"),
    (["data.target_source.p_t=[0.5,0.5]"], r"^data.target_source.p_t.*2 weights given for 3"),
    (["data.target_source.p_t=[0.5,0.2,0.2]"], r"^data.target_source.p_t.*sum to 1"),
    (["data.target_source.p_t=middle"], r"^data.target_source.p_t"),
    (["data.target_source.checkpoints=[1,7]"], r"data.target_source.checkpoints"),
    (["sft.num_checkpoints=500"], r"^sft.num_checkpoints: T=500 is larger than the 6 optimiser steps"),
    (["sft.num_checkpoints=0"], r"^sft.num_checkpoints"),
    (["+sft.grid=[3,100]"], r"^sft.grid: T=100 is larger than"),
    (["student.num_checkpoints=50"], r"^student.num_checkpoints: 50 is larger than"),
    (["student.num_checkpoints=0"], r"^student.num_checkpoints: must be an integer >= 1"),
    (["data.train_limit=0"], r"^data.train_limit"),
    (["data.val_limit=-1"], r"^data.val_limit"),
    (["data.task.n_train=0"], r"^data.task: the train split of 'sum' is empty"),
    (["data.max_length=256"], r"^data.max_length: 256 is longer than the model's context of 128"),
    (["data.max_length=8"], r"^data.max_length: 8 leaves no room .*at least 12 tokens"),  # before θ0: a lower bound
    (["seed=-1"], r"^seed"),
    (["objective.floor=high"], r"^objective.floor"),
    (["objective.metric=''"], r"^objective.metric: must be null or a key of results.json"),
    (["+objective.direction=max"], r"^objective.direction: unknown key"),
    (["trainer._target_=collections.OrderedDict"], r"^trainer._target_: .* is not lightning.pytorch.Trainer"),
    (["trainer._target_=no.such.Trainer"], r"^trainer._target_: cannot import"),
    (["trainer._partial_=false"], r"^trainer._partial_: must be true"),
    (["+callbacks.bad._target_=no.such.Callback"], r"^callbacks.bad._target_: cannot import"),
    (["method.kind=magic"], r"^method.kind"),
    # -- sft: the loop, the optimiser, the scheduler (and the toy θ0's pretraining, same checks)
    (["sft.epochs=-1"], r"^sft.epochs: must be an integer >= 1"),
    (["sft.epochs=1.5"], r"^sft.epochs: must be an integer"),
    (["sft.batch_size=0"], r"^sft.batch_size"),
    (["sft.batch_size=200"], r"^sft.batch_size: 200 per device .* 96 training examples"),
    (["sft.effective_batch_size=500"], r"^sft.effective_batch_size: 500 is larger than the 96"),
    (["sft.effective_batch_size=0"], r"^sft.effective_batch_size: must be null or an integer >= 1"),
    (["sft.max_steps=-5"], r"^sft.max_steps: must be -1"),
    (["sft.max_steps=0"], r"^sft.max_steps: must be -1"),
    (["sft.accumulate_grad_batches=-1"], r"^sft.accumulate_grad_batches"),
    (["sft.gradient_clip_val=-1"], r"^sft.gradient_clip_val"),
    (["+sft.epoch=5"], r"^sft.epoch: unknown key"),
    (["sft.optimizer.lr=-0.001"], r"^sft.optimizer.lr: must be a finite number > 0, got -0.001"),
    (["sft.optimizer.lr=0"], r"^sft.optimizer.lr"),
    (["sft.optimizer.lr=nan"], r"^sft.optimizer.lr"),
    (["sft.optimizer.lr=inf"], r"^sft.optimizer.lr"),
    (["sft.optimizer.betas=[0.9,1.5]"], r"^sft.optimizer.betas: must be two finite numbers in \[0, 1\)"),
    (["sft.optimizer.betas=[0.9]"], r"^sft.optimizer.betas"),
    (["+sft.optimizer.eps=0"], r"^sft.optimizer.eps: must be a finite number > 0"),
    (["sft.optimizer.weight_decay=-0.1"], r"^sft.optimizer.weight_decay: must be a finite number >= 0"),
    (["+sft.optimizer.momentum=0.9"], r"^sft.optimizer: .*unexpected keyword argument 'momentum'"),
    (["sft.optimizer._target_=torch.optim.Nope"], r"^sft.optimizer: .*torch.optim.Nope"),
    (["sft.optimizer._partial_=false"], r"^sft.optimizer._partial_: must be true"),
    (["sft.scheduler.warmup_ratio=1.5"], r"^sft.scheduler.warmup_ratio: must be a finite number in \[0, 1\)"),
    (["+sft.scheduler.bogus=1"], r"^sft.scheduler: .*unexpected keyword argument 'bogus'"),
    (["model.build.pretrain.optimizer.lr=-1"], r"^model.build.pretrain.optimizer.lr"),
    (["model.build.pretrain.epochs=0"], r"^model.build.pretrain.epochs"),
    # -- the model
    (["model.name_or_path=/no/such/model"], r"^model.name_or_path"),
    (["model.dtype=float99"], r"^model.dtype: unknown dtype 'float99'"),
    (["+model.logprob_chunk=0"], r"^model.logprob_chunk: must be null or an integer >= 1"),
    (["log_samples.harvest=-1"], r"^log_samples.harvest: must be an integer >= 0"),
    (["+log_samples.every=2"], r"^log_samples.every: unknown key"),
    (["model.attn_implementation=magic"], r"^model.attn_implementation: 'magic' is not one of"),
    # -- the trainer: keys tms sets itself, keys L.Trainer does not take, values it would refuse when built
    (["+trainer.max_epochs=5"], r"^trainer.max_epochs: set by tms; use sft.epochs"),
    (["+trainer.accumulate_grad_batches=2"], r"^trainer.accumulate_grad_batches: .*use sft.accumulate_grad_batches or "
                                             r"sft.effective_batch_size"),
    (["+trainer.gradient_clip_val=1"], r"^trainer.gradient_clip_val: .*use sft.gradient_clip_val"),
    (["+trainer.bogus=1"], r"^trainer.bogus: is not an argument of lightning.Trainer"),
    (["trainer.devices=0"], r"^trainer.devices"),
    (["trainer.num_nodes=0"], r"^trainer.num_nodes"),
    (["trainer.precision=bf17"], r"^trainer.precision: must be one of"),
    (["trainer.accelerator=quantum"], r"^trainer.accelerator"),
    (["trainer.strategy=magic"], r"^trainer.strategy: 'magic' is not one of"),
    (["trainer=ddp_cpu", "trainer.strategy._target_=nope.Nope"], r"^trainer.strategy._target_: cannot import"),
    (["trainer.checkpoint_every_n_steps=0"], r"^trainer.checkpoint_every_n_steps"),
    (["+trainer.enable_checkpointing=false"], r"^trainer.enable_checkpointing: False is not supported"),
    (["+trainer.barebones=true"], r"^trainer.barebones"),
    (["+trainer.fast_dev_run=true"], r"^trainer.fast_dev_run: .*optimiser steps the T checkpoints"),
    (["+trainer.limit_train_batches=0.5"], r"^trainer.limit_train_batches: .*use data.train_limit"),
    (["+trainer.overfit_batches=1"], r"^trainer.overfit_batches"),
    (["+trainer.max_time=00:00:00:01"], r"^trainer.max_time: .*use sft.max_steps"),
    (["+trainer.min_steps=100"], r"^trainer.min_steps"),
    # -- the harvest (generation from the train prompts)
    (["harvest.max_new_tokens=0"], r"^harvest.max_new_tokens: must be an integer >= 1, got 0"),
    (["harvest.max_new_tokens=abc"], r"^harvest.max_new_tokens: must be an integer"),
    (["harvest.max_new_tokens=200"], r"^harvest.max_new_tokens: the prompt .* has at least 12 tokens; with 200 new "
                                     r"tokens it exceeds the model's context of 128"),  # θ0 not built: a lower bound
    (["harvest.samples_per_prompt=0"], r"^harvest.samples_per_prompt"),
    (["harvest.temperature=-1"], r"^harvest.temperature"),
    (["harvest.top_p=0"], r"^harvest.top_p"),
    (["harvest.top_p=1.5"], r"^harvest.top_p"),
    (["harvest.batch_size=0"], r"^harvest.batch_size"),
    (["harvest.shard_size=0"], r"^harvest.shard_size"),
    (["harvest.backend=magic"], r"^harvest.backend"),
    (["harvest.prompt_subset=100000"], r"^harvest.prompt_subset"),
    # vLLM's own sampling limits, refused before vLLM is imported (so also on machines without it)
    (["harvest.backend=vllm", "harvest.temperature=0", "harvest.samples_per_prompt=2"],
     r"^harvest.temperature: 0 \(greedy\) with harvest.samples_per_prompt=2: vLLM refuses"),
    (["harvest.backend=vllm", "harvest.temperature=2.5"], r"^harvest.temperature: 2.5 is above vLLM's limit of 2"),
    (["harvest.backend=vllm", "harvest.tensor_parallel_size=0"], r"^harvest.tensor_parallel_size"),
    # -- the evaluation suite
    (["eval.target=nope"], r"^eval.target"),
    (["eval.retention=[nope]"], r"^eval.retention"),
    (["eval.max_new_tokens=0"], r"^eval.max_new_tokens"),
    (["eval.batch_size=0"], r"^eval.batch_size"),
    (["eval.limit=0"], r"^eval.limit"),
    (["eval.split=nope"], r"^eval.split"),
    (["eval.sampling.n=0"], r"^eval.sampling.n"),
    (["eval.sampling.ks=[16]"], r"^eval.sampling.ks: .*\[1, eval.sampling.n=4\]"),
    (["eval.sampling.temperature=-1"], r"^eval.sampling.temperature"),
    (["eval.sampling.top_p=0"], r"^eval.sampling.top_p"),
    (["eval.kl.estimator=k9"], r"^eval.kl.estimator"),
    (["eval.kl.limit=0"], r"^eval.kl.limit"),
    (["eval.benchmarks.sum.skill=nope"], r"^eval.benchmarks.sum: unknown toy skill 'nope'"),
    (["+eval.benchmarks.sum.bogus=1"], r"^eval.benchmarks.sum: .*unexpected keyword argument 'bogus'"),
    # -- RL: every rl key, before θ0 (the RL stage checks them again)
    (["method=grpo", "+rl.foo=1"], r"^rl.foo: unknown key"),
    (["method=grpo", "rl.temperature=0"], r"^rl.temperature"),
    (["method=grpo", "rl.temperature=abc"], r"^rl.temperature"),
    (["method=grpo", "rl.top_p=0"], r"^rl.top_p"),
    (["method=grpo", "rl.max_new_tokens=0"], r"^rl.max_new_tokens: must be an integer >= 1"),
    (["method=grpo", "rl.max_new_tokens=200"], r"^rl.max_new_tokens: the prompt .* exceeds the model's context"),
    (["method=grpo", "rl.num_generations=1"], r"^rl.num_generations"),
    (["method=grpo", "rl.micro_batch_size=0"], r"^rl.micro_batch_size"),
    (["method=grpo", "rl.epsilon=1"], r"^rl.epsilon"),
    (["method=grpo", "rl.beta=-1"], r"^rl.beta"),
    (["method=reinforce", "rl.momentum=2"], r"^rl.momentum"),
    (["method=grpo", "rl.baseline=ppo"], r"^rl.baseline"),
    (["method=grpo", "rl.epochs=0"], r"^rl.epochs"),
    (["method=grpo", "rl.max_steps=0"], r"^rl.max_steps"),
    (["method=grpo", "rl.prompts_per_step=1000"], r"^rl.prompts_per_step: 1000 prompts per optimiser step is more than the 96 training prompts"),
    (["method=grpo", "rl.num_checkpoints=1000"], r"^rl.num_checkpoints: 1000 is larger than the 6 optimiser steps"),
    (["method=grpo", "rl.lr=-1"], r"^rl.lr"),
    (["method=grpo", "rl.lr_scale=-1"], r"^rl.lr_scale"),
    (["method=grpo", "sft.optimizer.lr=-0.001"], r"^sft.optimizer.lr"),  # RL's lr = rl.lr_scale x this
    (["method=grpo", "rl.backend=vllm"], r"^rl.backend: 'vllm' is not implemented"),
    (["method=grpo", "rl.vllm_sync=true"], r"^rl.vllm_sync"),
    (["method=grpo", "rl.reward._target_=tms.methods.rewards.Nope"], r"^rl.reward._target_: cannot import"),
    (["method=grpo", "+rl.reward.bogus=1"], r"^rl.reward: .*unexpected keyword argument 'bogus'"),
    (["method=grpo", "+trainer.max_steps=3"], r"^trainer.max_steps: set by tms; .*rl.max_steps"),
    # -- credentials
    (["+logger.api_key=abcdef123456"], r"^logger.api_key: looks like a credential"),
])
def test_invalid_settings_fail_before_compute_naming_the_key(overrides, match, tmp_path):
    invalid(tmp_path, overrides, match)


@pytest.mark.parametrize("key", RESERVED_TRAINER_KEYS)
def test_every_trainer_key_tms_sets_is_refused_with_what_to_use(key, tmp_path):
    msg = invalid(tmp_path, [f"+trainer.{key}=1"], rf"^trainer.{key}: set by tms")
    assert msg == f"trainer.{key}: {RESERVED_TRAINER_KEYS[key]}"


def test_build_trainer_sets_exactly_the_reserved_keys_and_refuses_them(tmp_path):
    """build_trainer asserts that what it sets is RESERVED_TRAINER_KEYS (one list, no drift), and refuses a clash
    itself for callers that skip validate; the unknown-key check follows L.Trainer's signature."""
    import inspect

    import lightning as L
    from omegaconf import OmegaConf

    from tms.training.loop import TMS_TRAINER_KEYS, build_trainer

    cfg = compose(["experiment=smoke"])
    trainer = build_trainer(cfg.trainer, cfg.sft, tmp_path, [], False)
    assert trainer.max_epochs == cfg.sft.epochs and trainer.num_sanity_val_steps == 0
    takes = set(inspect.signature(L.Trainer.__init__).parameters)
    assert set(RESERVED_TRAINER_KEYS) <= takes and not (set(TMS_TRAINER_KEYS) - {"strategy"}) & takes
    clash = OmegaConf.create({**OmegaConf.to_container(cfg.trainer), "max_epochs": 2})
    with pytest.raises(ConfigError, match="^trainer.max_epochs: set by tms; use sft.epochs"):
        build_trainer(clash, cfg.sft, tmp_path, [], False)


def test_vllm_backend_without_vllm_says_what_to_install(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    invalid(tmp_path, ["harvest.backend=vllm"], r"pip install -e '.\[vllm\]'", errors=(ImportError,))


def test_prompt_plus_new_tokens_longer_than_the_context(smoke_cache, tmp_path):
    """With θ0's tokenizer (the toy θ0 of the session cache) the prompt lengths are exact."""
    invalid(tmp_path, ["harvest.max_new_tokens=120"],
            r"^harvest.max_new_tokens: the prompt of train example 'sum-train-\d+' .* has 12 tokens; with 120 new "
            r"tokens it exceeds the model's context of 128", cache=smoke_cache)


def test_toy_prompt_lengths_before_theta0_bound_the_tokenizer_from_below(smoke_base):
    from tms.data.formatting import prompt_ids
    from tms.config.inputs import toy_prompt_lengths
    from tms.models.loading import load_tokenizer
    from tms.toy.tasks import ToyTask

    tok = load_tokenizer(smoke_base)
    for skill in ("sum", "chain", "add", "reverse", "max", "sort"):
        task = ToyTask(skill, n_train=30, n_val=0, n_test=0, seed=0)
        examples = task.examples("train")
        exact = [len(prompt_ids(tok, task.messages(e))) for e in examples]
        bound = toy_prompt_lengths(task, examples)
        assert all(b <= n for b, n in zip(bound, exact)), skill
        assert bound == exact, skill  # the toy tokenizer learns every toy word: the bound is exact


@pytest.mark.parametrize("overrides,warning", [
    (["harvest.temperature=0", "harvest.samples_per_prompt=2"], "harvest.temperature=0 (greedy) with "
                                                                "harvest.samples_per_prompt=2"),
    (["eval.sampling.temperature=0"], "eval.sampling.temperature=0 (greedy) with eval.sampling.n=4"),
])
def test_greedy_with_several_samples_on_hf_warns_but_runs(overrides, warning, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="tms.config"):
        validate(compose(["experiment=smoke", f"cache_dir={tmp_path}", *overrides]))
    assert warning in caplog.text and "identical" in caplog.text
    assert listing(tmp_path) == []


@pytest.mark.parametrize("overrides,key", [
    (["sft.optimizer.lr=-0.001"], "sft.optimizer.lr"),
    (["+trainer.max_epochs=5"], "trainer.max_epochs"),
])
def test_train_py_fails_in_seconds_naming_the_key(overrides, key, tmp_path):
    """End to end: ``python train.py experiment=smoke <bad override>`` exits non-zero, names the key on stderr and
    leaves the cache empty (before the fix: θ0 was built and training started first)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TMS_CACHE": str(cache)}
    cmd = [sys.executable, "train.py", "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert f"ConfigError: {key}:" in proc.stderr, proc.stderr[-4000:]
    assert listing(cache) == [], "no stage directory may be created"
    assert elapsed < 60, f"took {elapsed:.0f} s"


def test_optimizer_steps_counts_epochs_accumulation_and_ranks():
    assert optimizer_steps(100, 10, 1, 1, 2, -1) == 20
    assert optimizer_steps(100, 10, 2, 1, 1, -1) == 5
    assert optimizer_steps(101, 10, 1, 4, 1, -1) == 3  # 11 micro-batches -> 3 steps
    assert optimizer_steps(100, 10, 1, 1, 5, 7) == 7


@pytest.mark.parametrize("overrides", [
    [], ["method=sft"], ["method=self_sft"], ["method=final_sft"], ["method=grpo"], ["method=reinforce"],
    ["experiment=smoke"], ["experiment=smoke", "method=grpo"], ["experiment=smoke", "trainer=ddp_cpu"],
    ["experiment=smoke", "trainer=fsdp2_cpu"], ["hparams=T"], ["experiment=smoke", "logger=wandb"],
])
def test_the_default_configs_are_valid(overrides):
    validate(compose(overrides))


def test_the_trainer_node_is_a_partial_lightning_trainer_with_overridable_defaults(tmp_path):
    """trainer._target_ / _partial_ (lightning-hydra-template style): tms's defaults in the base file can be
    overridden, a Trainer subclass can be named, and the callbacks group adds callbacks to tms's own."""
    import lightning as L
    from omegaconf import OmegaConf

    from tms.training.loop import build_trainer

    cfg = compose(["experiment=smoke", "trainer.enable_model_summary=true", "callbacks=lr_monitor"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer" and cfg.trainer._partial_ is True
    validate(cfg)
    trainer = build_trainer(cfg.trainer, cfg.sft, tmp_path, [], False, cfg.callbacks)
    summary = L.pytorch.callbacks.ModelSummary  # what enable_model_summary=true adds
    assert isinstance(trainer, L.Trainer) and any(isinstance(c, summary) for c in trainer.callbacks)
    assert any(isinstance(c, L.pytorch.callbacks.LearningRateMonitor) for c in trainer.callbacks)
    default = build_trainer(compose(["experiment=smoke"]).trainer, cfg.sft, tmp_path, [], False)
    assert not any(isinstance(c, summary) for c in default.callbacks)
    assert not any(isinstance(c, L.pytorch.callbacks.LearningRateMonitor) for c in default.callbacks)

    class MyTrainer(L.Trainer):
        pass

    sub = OmegaConf.create({**OmegaConf.to_container(cfg.trainer), "_target_": f"{__name__}.MyTrainer"})
    globals()["MyTrainer"] = MyTrainer
    assert type(build_trainer(sub, cfg.sft, tmp_path, [], False)) is MyTrainer


def test_user_callbacks_enter_the_training_stage_keys():
    from tms.stages.common import train_key

    plain = train_key(compose(["experiment=smoke"]))
    assert "callbacks" not in plain  # the default (no callbacks) keeps the key as it was
    assert train_key(compose(["experiment=smoke", "callbacks=lr_monitor"]))["callbacks"]["lr_monitor"]["_target_"]
