"""LoRA adapters (``model.lora``, :mod:`tms.models.lora`) on the smoke toy world.

Only the adapters train; every saved checkpoint is a plain HF model with the adapters merged (its logits equal the
adapted model's), optionally with the adapter itself in ``<checkpoint>/adapter``; GRPO's frozen θ0 is the policy with
its adapters disabled; the settings are part of the training stages' keys only when set; invalid settings fail before
any compute, naming the key. Runs in-process except the 2-process DDP run (a subprocess, ~20 s).
"""
import functools
import importlib
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from tests.conftest import compose
from tests.helpers import Crash, assert_resumed_to_the_same_model, crash_at_step, invalid, rl_config, train_smoke
from tms.core.errors import ConfigError
from tms.core.io import read_json


def peft_available() -> bool:
    try:
        importlib.import_module("peft")
    except ImportError:
        return False
    return True


needs_peft = pytest.mark.skipif(not peft_available(), reason="needs peft (pip install 'tms[lora]')")
LORA = ["+model.lora.r=4", "+model.lora.alpha=8"]


def settings(**kw):
    from tms.models.lora import LoraSettings

    return LoraSettings.from_config({"r": 4, "alpha": 8, **kw})


def sft_module(base, lora):
    from tms.methods.sft import SFTModule

    return SFTModule(base, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0),
                     model_kwargs={"dtype": "float32"}, lora=lora)


def randomise_adapters(model, seed=0):
    """Non-zero B (peft starts B at 0, an adapter that changes nothing), so the adapted model differs from θ0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def toy_batch(tokenizer, n=6, seed=0):
    from tms.data.formatting import collate_right_padded, prompt_ids
    from tms.toy.tasks import ToyTask

    task = ToyTask("sum", n_train=n, n_val=0, n_test=0, seed=seed)
    items = []
    for ex in task.examples("train"):
        prompt = prompt_ids(tokenizer, task.messages(ex))
        items.append((prompt + tokenizer.encode(ex.reference, add_special_tokens=False), len(prompt)))
    return collate_right_padded(items, int(tokenizer.pad_token_id))


@torch.no_grad()
def logits(model, batch):
    was = model.training
    model.eval()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.train(was)
    return out


def fake_trainer():
    """What :meth:`CausalLMModule.export_hf` reads of a trainer, for one process."""
    return SimpleNamespace(strategy=SimpleNamespace(barrier=lambda *a: None), is_global_zero=True)


def is_plain(model_dir: Path) -> None:
    """A plain HF model directory: loads with AutoModelForCausalLM, no adapter tensors, no adapter config at the top."""
    from safetensors.torch import load_file

    from tms.models.loading import load_model

    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    assert not (model_dir / "adapter_config.json").exists()
    keys = set(load_file(str(model_dir / "model.safetensors")))
    assert keys and not [k for k in keys if "lora" in k or "base_layer" in k], sorted(keys)[:5]
    model = load_model(str(model_dir), dtype="float32")
    assert not [n for n, _ in model.named_modules() if "lora" in n]
    return model


# ---------------------------------------------------------------- config, keys, validation

def test_settings_defaults_and_stage_keys():
    from tms.stages.common import train_key

    s = settings()
    assert (s.r, s.alpha, s.dropout, s.target_modules, s.save_adapters) == (4, 8.0, 0.0, "all-linear", False)
    from tms.models.lora import LoraSettings

    assert LoraSettings.from_config({"r": 16}).alpha == 32.0  # alpha defaults to 2r
    assert LoraSettings.from_config(None) is None
    off = train_key(compose(["experiment=smoke"]))
    assert "lora" not in off
    assert train_key(compose(["experiment=smoke", "+model.lora=null"])) == off  # null = absent: the same key
    on = train_key(compose(["experiment=smoke", *LORA, "+model.lora.target_modules=[q_proj,v_proj]"]))
    assert on["lora"] == {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                          "save_adapters": False}
    assert {k: v for k, v in on.items() if k != "lora"} == off


@needs_peft
@pytest.mark.parametrize("overrides,match", [
    (["+model.lora.r=0"], r"model\.lora\.r: must be an integer >= 1, got 0"),
    (["+model.lora.alpha=8"], r"model\.lora\.r: must be an integer >= 1, got None"),
    (["+model.lora.r=2.5"], r"model\.lora\.r: must be an integer"),
    (["+model.lora.r=4", "+model.lora.alpha=0"], r"model\.lora\.alpha: must be null or a finite number > 0"),
    (["+model.lora.r=4", "+model.lora.dropout=1.0"], r"model\.lora\.dropout: must be a finite number in \[0, 1\)"),
    (["+model.lora.r=4", "+model.lora.rank=8"], r"model\.lora\.rank: unknown key"),
    (["+model.lora.r=4", "+model.lora.save_adapters=maybe"], r"model\.lora\.save_adapters: must be true or false"),
    (["+model.lora.r=4", "+model.lora.target_modules=all"], r"model\.lora\.target_modules: must be 'all-linear'"),
    (["+model.lora.r=4", "+model.lora.target_modules=[]"], r"model\.lora\.target_modules: must be 'all-linear' or a"),
    (["+model.lora.r=4", "+model.lora.target_modules=[lm_head]"], r"model\.lora\.target_modules: LoRA on the output"),
    (["+model.lora.r=4", "+model.lora.target_modules=[qq_proj]"], r"model\.lora\.target_modules: .*qq_proj.*not found"),
    (["+model.lora.r=4", "+model.lora.target_modules=[embed_tokens]"], r"model\.lora\.target_modules: .*tied"),
    (["+model.lora=16"], r"model\.lora: must be null \(full fine-tuning\) or a mapping"),
])
def test_invalid_lora_settings_fail_before_compute(tmp_path, overrides, match):
    invalid(tmp_path, overrides, match)


@needs_peft
def test_target_modules_are_checked_against_the_built_toy_model(smoke_cache, tmp_path):
    """With θ0 in the cache its own config.json is instantiated on the meta device (the same check)."""
    invalid(tmp_path, ["+model.lora.r=4", "+model.lora.target_modules=[qq_proj]"], "not found", cache=smoke_cache)


def test_missing_peft_is_reported_with_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    invalid(tmp_path, ["+model.lora.r=4"], r"model\.lora: LoRA needs the peft package.*pip install 'tms\[lora\]'")


def test_fsdp1_is_refused():
    from omegaconf import OmegaConf

    from tms.config.inputs import is_fsdp1

    assert is_fsdp1(OmegaConf.create({"_target_": "tms.models.strategies.FSDP"}))
    assert is_fsdp1("fsdp")
    assert not is_fsdp1(OmegaConf.create({"_target_": "tms.models.strategies.FSDP2"}))
    assert not is_fsdp1(OmegaConf.create({"_target_": "lightning.pytorch.strategies.DDPStrategy"}))
    assert not is_fsdp1("auto") and not is_fsdp1(None)


# ---------------------------------------------------------------- training and export

@needs_peft
def test_training_steps_change_only_the_adapters(smoke_base):
    from tms.data.datamodule import PostTrainDataModule
    from tms.data.sources import ReferenceSource
    from tms.models.loading import load_model, load_tokenizer
    from tms.toy.tasks import ToyTask

    base = {n: p.detach().clone() for n, p in load_model(smoke_base, dtype="float32").named_parameters()}
    module = sft_module(smoke_base, settings())
    module.configure_model()
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    adapters = {n for n in start if ".lora_" in n}
    assert adapters and {n for n, p in module.model.named_parameters() if p.requires_grad} == adapters
    dm = PostTrainDataModule(ToyTask("sum", n_train=16, n_val=0, n_test=0), ReferenceSource(), batch_size=8,
                             max_length=64).connect(load_tokenizer(smoke_base))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimised == {id(p) for n, p in module.model.named_parameters() if n in adapters}
    after = dict(module.model.named_parameters())
    for name, p in after.items():
        if name in adapters:  # 2 steps: B moves on the first (A's gradient is 0 while B = 0), A on the second
            assert not torch.equal(p.detach(), start[name]), f"adapter {name} not updated"
        else:  # bit-identical to θ0 as saved: the name without peft's base_layer
            assert torch.equal(p.detach(), base[name.replace(".base_layer.", ".")]), f"base weight {name} changed"


@needs_peft
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "down_proj"]])
def test_merged_export_has_the_adapted_logits(smoke_base, tmp_path, targets):
    from peft import PeftModel

    from tms.models.loading import load_model, load_tokenizer
    from tms.models.lora import merged_state_dict

    tok = load_tokenizer(smoke_base)
    module = sft_module(smoke_base, settings(target_modules=targets, save_adapters=True, dropout=0.1))
    module.configure_model()
    randomise_adapters(module.model)
    batch = toy_batch(tok)
    adapted = logits(module.model, batch)
    assert not torch.allclose(adapted, logits(load_model(smoke_base, dtype="float32"), batch), atol=1e-3)
    before = {n: p.detach().clone() for n, p in module.model.state_dict().items()}
    module.trainer = fake_trainer()
    module.export_hf(tmp_path / "t=01", tok)
    # the training model is untouched: not merged in place, the adapters still on, the same outputs
    assert all(torch.equal(before[n], p) for n, p in module.model.state_dict().items())
    assert torch.equal(logits(module.model, batch), adapted)
    exported = is_plain(tmp_path / "t=01")
    torch.testing.assert_close(logits(exported, batch), adapted, rtol=0, atol=2e-5)
    # the same merge as peft's own merge_and_unload (on a copy)
    import copy

    reference = copy.deepcopy(module.peft_model).merge_and_unload().state_dict()
    ours = merged_state_dict(module.model)
    assert ours.keys() == reference.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], rtol=0, atol=1e-6)
    # the adapter alone, loadable on θ0
    adapter = tmp_path / "t=01" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(load_model(smoke_base, dtype="float32"), str(adapter))
    torch.testing.assert_close(logits(reloaded, batch), adapted, rtol=0, atol=1e-6)


@needs_peft
def test_rl_reference_is_the_base_model_with_adapters_disabled(smoke_base):
    from tms.methods.rl import RLModule
    from tms.models.loading import load_tokenizer

    tok = load_tokenizer(smoke_base)
    module = RLModule(smoke_base, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
                      model_kwargs={"dtype": "float32"}, reward_fn=lambda c, e, t: [0.0] * len(c),
                      rl=rl_config(beta=0.04, micro_batch_size=4, num_generations=4), lora=settings())
    module.configure_model()
    assert module._ref == []  # no second copy of the model
    randomise_adapters(module.model)
    batch = toy_batch(tok)
    ref = module.reference_logprobs(batch)
    assert module.model.training  # back in train mode
    plain = RLModule(smoke_base, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
                     model_kwargs={"dtype": "float32"}, reward_fn=lambda c, e, t: [0.0] * len(c),
                     rl=rl_config(beta=0.04, micro_batch_size=4, num_generations=4))
    plain.configure_model()
    assert torch.equal(ref, plain.reference_logprobs(batch))  # θ0 exactly
    policy = module._token_logprobs_of(module.model, batch)
    assert not torch.allclose(policy, ref, atol=1e-3)  # the adapters are on again


# ---------------------------------------------------------------- whole runs

def run_pipeline(cache, run_dir, *overrides):
    from tms.pipeline import run

    cfg = compose(["experiment=smoke", f"cache_dir={cache}", *overrides])
    return run(cfg, run_dir)


@needs_peft
def test_sft_pipeline_with_lora_saves_plain_checkpoints(smoke_cache, tmp_path):
    res = run_pipeline(smoke_cache, tmp_path, "method=sft", *LORA, "+model.lora.save_adapters=true")
    stage = Path(read_json(tmp_path / "pipeline.json")["stages"]["sft"])
    key = read_json(stage / "manifest.json")["key"]
    assert key["train"]["lora"]["r"] == 4
    index = read_json(stage / "checkpoints" / "trajectory.json")
    assert sorted(index["checkpoints"]) == ["1", "2", "3"]
    for t in ("t=01", "t=02", "t=03"):
        is_plain(stage / "checkpoints" / t)
        assert (stage / "checkpoints" / t / "adapter" / "adapter_model.safetensors").is_file()
    first = dict(is_plain(stage / "checkpoints" / "t=01").named_parameters())
    last = dict(is_plain(stage / "checkpoints" / "t=03").named_parameters())
    assert [n for n in last if not torch.equal(last[n], first[n])]  # training went on after the first export
    assert set(res["rows"]) == {"base", "sft"}


@needs_peft
def test_tms_pipeline_with_lora_trains_stage1_and_the_student_with_adapters(smoke_cache, tmp_path):
    """Stage 1's checkpoints are harvested (plain HF models), the student trains with the same adapters."""
    res = run_pipeline(smoke_cache, tmp_path, "method=tms", *LORA)
    stages = read_json(tmp_path / "pipeline.json")["stages"]
    for name in ("sft", "student"):
        assert read_json(Path(stages[name]) / "manifest.json")["key"]["train"]["lora"]["r"] == 4, name
    assert len(stages["harvest"]) == 3
    is_plain((tmp_path / "model").resolve())
    assert set(res["rows"]) == {"base", "sft", "tms"}


@needs_peft
def test_grpo_pipeline_with_lora_saves_a_plain_model(smoke_cache, tmp_path):
    res = run_pipeline(smoke_cache, tmp_path, "method=grpo", *LORA, "rl.max_steps=3", "rl.num_generations=4",
                       "rl.prompts_per_step=8", "rl.beta=0.04")
    stage = Path(read_json(tmp_path / "pipeline.json")["stages"]["rl"])
    assert read_json(stage / "manifest.json")["key"]["train"]["lora"]["r"] == 4
    is_plain((tmp_path / "model").resolve())
    assert not (tmp_path / "model" / "adapter").exists()  # save_adapters defaults to false
    assert set(res["rows"]) >= {"base", "grpo"}


@needs_peft
def test_lora_sft_killed_mid_training_resumes_to_the_same_model(smoke_base, tmp_path, monkeypatch):
    """Lightning's last.ckpt holds the adapted model (base and adapter tensors) and the adapters' optimiser state: a
    crash after step 2 and a re-run end with the uninterrupted run's merged weights, bit for bit."""

    from tms.methods.sft import SFTModule
    from tms.stages.common import ModelRef
    from tms.stages.sft import run_sft

    base = ModelRef(smoke_base, {"path": "smoke"})
    common = ["experiment=smoke", "method=sft", "trainer.checkpoint_every_n_steps=1", *LORA]
    full = run_sft(compose([*common, f"cache_dir={tmp_path / 'full'}"]), base)
    cfg = compose([*common, f"cache_dir={tmp_path / 'crash'}"])
    undo = crash_at_step(monkeypatch, SFTModule, 2, "step")
    with pytest.raises(Crash):
        run_sft(cfg, base)
    assert next((tmp_path / "crash" / "sft").glob("*.partial")).joinpath("lightning", "last.ckpt").is_file()
    undo()
    resumed = run_sft(cfg, base)
    assert_resumed_to_the_same_model(full, resumed, smoke_base)  # the merged adapters moved the weights


# ---------------------------------------------------------------- 2 processes (DDP over gloo)

@needs_peft
@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp2_cpu"])
def test_lora_sft_on_two_processes_matches_one(smoke_cache, tmp_path, trainer):
    """2 ranks x 8 = 1 x 16 examples per step: the same held-out PLD at each checkpoint (rel 1e-4, as full
    fine-tuning in tests/test_multiprocess_training.py), and plain exported checkpoints (FSDP2: merged from the
    state dict gathered from the shards), whose weights are θ0 plus the adapter saved next to them."""
    from peft import PeftModel

    from tms.models.loading import load_model, load_tokenizer

    run_pipeline(smoke_cache, tmp_path / "one", "method=sft", *LORA)
    two = train_smoke(smoke_cache, tmp_path / "two", "method=sft", f"trainer={trainer}", "model.batch_size=8",
                           *LORA, "+model.lora.save_adapters=true")
    plds = {}
    for name, run_dir in (("one", tmp_path / "one"), ("two", two)):
        stage = Path(read_json(run_dir / "pipeline.json")["stages"]["sft"])
        assert read_json(stage / "manifest.json")["key"]["train"]["lora"]["r"] == 4
        index = read_json(stage / "checkpoints" / "trajectory.json")
        plds[name] = {t: (e["step"], e["pld"]) for t, e in index["checkpoints"].items()}
        is_plain(stage / "checkpoints" / "t=03")
    assert read_json(Path(read_json(two / "pipeline.json")["stages"]["sft"]) / "manifest.json")["key"]["train"][
        "world_size"] == 2
    last = Path(read_json(two / "pipeline.json")["stages"]["sft"]) / "checkpoints" / "t=03"
    base_dir = read_json(two / "pipeline.json")["stages"]["base"]
    batch = toy_batch(load_tokenizer(str(last)))
    adapted = PeftModel.from_pretrained(load_model(base_dir, dtype="float32"), str(last / "adapter"))
    torch.testing.assert_close(logits(is_plain(last), batch), logits(adapted, batch), rtol=0, atol=2e-5)
    assert plds["one"].keys() == plds["two"].keys()
    for t, (step, pld) in plds["one"].items():
        assert plds["two"][t][0] == step
        assert plds["two"][t][1] == pytest.approx(pld, rel=1e-4), t


def test_invalid_settings_raise_config_error():
    from tms.models.lora import LoraSettings

    with pytest.raises(ConfigError, match=r"model\.lora\.dropout"):
        LoraSettings.from_config({"r": 4, "dropout": -0.1})
