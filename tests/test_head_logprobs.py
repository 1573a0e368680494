"""Memory-bounded log-probs (tms.objectives.head_logprobs) against the full-logits reference, in float64: values,
gradients and entropy equal, whatever the chunk size; the model-level path equals the model's own logits."""
import pytest
import torch

from tms.objectives.head_logprobs import (
    hidden_token_logprobs,
    lm_head_logprobs,
    model_token_logprobs,
    supports_head_logprobs,
)
from tms.objectives.nll import IGNORE_INDEX, token_logprobs
from tms.objectives.policy_gradient import masked_entropy


def batch(B=3, L=9, H=6, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :4] = IGNORE_INDEX  # prompt
    labels[1, :2] = IGNORE_INDEX
    labels[1, -3:] = IGNORE_INDEX  # right padding
    labels[2, :] = IGNORE_INDEX  # a row with no completion token
    return hidden, weight, bias, labels


@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_full_logits(chunk, temperature):
    hidden, weight, bias, labels = batch()
    probe = torch.randn(labels.shape[0], labels.shape[1] - 1, dtype=torch.float64)
    ref_logp, ref_mask = token_logprobs((hidden @ weight.T + bias) / temperature, labels)
    ref_grads = torch.autograd.grad((ref_logp * probe).sum(), (hidden, weight, bias))
    logp, mask, ent = hidden_token_logprobs(hidden, weight, labels, bias, temperature, chunk, entropy=True)
    grads = torch.autograd.grad((logp * probe).sum(), (hidden, weight, bias))
    assert logp.dtype == torch.float64 and torch.equal(mask, ref_mask)
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
    assert float(logp.detach()[~mask].abs().sum()) == 0.0
    # entropy at the labelled positions: the reference's mean, and 0 elsewhere
    ref_ent = masked_entropy((hidden @ weight.T + bias).detach() / temperature, labels)
    torch.testing.assert_close(ent[mask].mean().float(), ref_ent, rtol=1e-6, atol=1e-6)
    assert not ent.requires_grad and float(ent[~mask].abs().sum()) == 0.0


def test_no_labelled_token_gives_zeros_and_a_zero_gradient():
    hidden, weight, bias, labels = batch()
    labels[:] = IGNORE_INDEX
    logp, mask, _ = hidden_token_logprobs(hidden, weight, labels, bias, chunk=4)
    assert not mask.any() and float(logp.detach().abs().sum()) == 0.0 and logp.requires_grad
    (g,) = torch.autograd.grad(logp.sum(), (weight,), allow_unused=True)
    assert g is None or float(g.abs().sum()) == 0.0


def tiny_lm(seed=0, **extra):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=37, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False, **extra)
    return Qwen2ForCausalLM(cfg).double()


def lm_batch(V=37):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 10), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 7:] = 0  # right padding
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    labels[attn == 0] = IGNORE_INDEX
    return ids, attn, labels


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_the_model_path_equals_the_models_own_logits_with_gradients(temperature):
    model = tiny_lm()
    ids, attn, labels = lm_batch()
    ref, mask_ref, ent_ref = model_token_logprobs(model, ids, attn, labels, temperature, chunk=None, entropy=True)
    ref_grads = torch.autograd.grad(ref.sum(), list(model.parameters()))
    logp, mask, ent = model_token_logprobs(model, ids, attn, labels, temperature, chunk=4, entropy=True)
    grads = torch.autograd.grad(logp.sum(), list(model.parameters()))
    assert torch.equal(mask, mask_ref)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)
    torch.testing.assert_close(ent.float(), ent_ref, rtol=1e-6, atol=1e-6)


def test_the_head_is_restored_and_a_post_head_transform_falls_back_to_full_logits():
    model = tiny_lm()
    ids, attn, labels = lm_batch()
    with lm_head_logprobs(model, labels, chunk=2):
        assert model(input_ids=ids, attention_mask=attn).logits.shape == (3, 10, 2)
    assert model(input_ids=ids, attention_mask=attn).logits.shape == (3, 10, 37)
    assert supports_head_logprobs(model)
    model.config.final_logit_softcapping = 30.0  # e.g. Gemma 2: the head's softmax is not the model's distribution
    assert not supports_head_logprobs(model)
    logp, _, _ = model_token_logprobs(model, ids, attn, labels, chunk=2)  # full logits, no error
    torch.testing.assert_close(logp, token_logprobs(model(input_ids=ids, attention_mask=attn).logits, labels)[0])


def test_the_generators_scores_use_the_chunked_path_with_the_same_values():
    from tms.generation.scoring import score_completions

    model = tiny_lm()
    prompts, comps = [[1, 2, 3], [4, 5]], [[6, 7, 8, 9], [10]]
    full = score_completions(model, prompts, comps, pad_id=0, batch_size=2)
    chunked = score_completions(model, prompts, comps, pad_id=0, batch_size=2, logprob_chunk=2)
    assert [len(c) for c in chunked] == [4, 1]
    for a, b in zip(full, chunked):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-10)


def test_a_pipeline_run_with_memory_bounded_logprobs_matches_the_full_logits(smoke_cache, tmp_path, monkeypatch):
    """model.logprob_chunk reaches Stage 1's loss, its PLD and the evaluation's KL / PLD scores: same weights and
    metrics as the full logits up to float rounding (another cache key: it is a separate run)."""
    from safetensors.torch import load_file

    from tests.conftest import compose
    from tms.pipeline import run

    import tms.objectives.head_logprobs as hl

    calls = []
    inner = hl.hidden_token_logprobs
    monkeypatch.setattr(hl, "hidden_token_logprobs", lambda *a, **k: calls.append(1) or inner(*a, **k))
    common = ["experiment=smoke", f"cache_dir={smoke_cache}", "method=sft", "sft.num_checkpoints=2"]
    full = run(compose(common), tmp_path / "full")
    assert not calls
    chunked = run(compose([*common, "+model.logprob_chunk=5"]), tmp_path / "chunked")
    assert len(calls) > 10  # training steps, Stage 1's PLD passes and the evaluation's scoring
    assert full["model"] != chunked["model"]
    a, b = load_file(f"{full['model']}/model.safetensors"), load_file(f"{chunked['model']}/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    fr, cr = full["rows"]["sft"], chunked["rows"]["sft"]
    assert fr["pld"] == pytest.approx(cr["pld"], rel=1e-4)
    for key in ("kl_to_base", "kl_from_base"):
        assert fr[key]["target"]["kl_seq"] == pytest.approx(cr[key]["target"]["kl_seq"], rel=1e-3, abs=1e-6)


def test_grpo_with_memory_bounded_logprobs_matches_the_full_logits(smoke_cache, monkeypatch):
    """RL's ratios, KL penalty and entropy through the chunked head: the same rollouts' rewards and the same weights."""
    from safetensors.torch import load_file

    import tms.objectives.head_logprobs as hl
    from tests.conftest import compose
    from tms.stages.base_model import resolve_base
    from tms.stages.common import final_checkpoint
    from tms.stages.rl import run_rl

    calls = []
    inner = hl.hidden_token_logprobs
    monkeypatch.setattr(hl, "hidden_token_logprobs", lambda *a, **k: calls.append(1) or inner(*a, **k))
    common = ["experiment=smoke", "method=grpo", f"cache_dir={smoke_cache}", "rl.max_steps=2", "rl.num_generations=4",
              "rl.prompts_per_step=8", "rl.beta=0.04", "rl.num_iterations=2", "rl.temperature=0.9"]
    stages = [run_rl(compose(o), resolve_base(compose(o))) for o in (common, [*common, "+model.logprob_chunk=7"])]
    assert calls
    (full, chunked) = stages
    assert full.manifest()["info"]["rewards"] == chunked.manifest()["info"]["rewards"]
    a = load_file(f"{final_checkpoint(full).path}/model.safetensors")
    b = load_file(f"{final_checkpoint(chunked).path}/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_the_liger_option_calls_its_fused_kernel_with_per_token_reduction_and_matches(monkeypatch):
    """liger-kernel cannot run here (Triton, CUDA): a stand-in with its documented signature
    (liger_fused_linear_cross_entropy(input, weight, target, bias, ..., reduction)) checks how it is called and that
    log-probs, gradients and entropy come out as the chunked path's."""
    import sys
    import types

    import torch.nn.functional as F

    calls = []

    def fused(input, weight, target, bias=None, ce_weight=None, ignore_index=-100, lse_square_scale=0.0,
              label_smoothing=0.0, reduction="mean", **kw):
        calls.append(reduction)
        return F.cross_entropy(F.linear(input, weight, bias), target, reduction=reduction)

    fake = types.ModuleType("liger_kernel.transformers.functional")
    fake.liger_fused_linear_cross_entropy = fused
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", fake)
    hidden, weight, bias, labels = batch()
    probe = torch.randn(labels.shape[0], labels.shape[1] - 1, dtype=torch.float64)
    ref, mask, ref_ent = hidden_token_logprobs(hidden, weight, labels, bias, 0.7, 4, entropy=True)
    ref_grads = torch.autograd.grad((ref * probe).sum(), (hidden, weight, bias))
    logp, mask2, ent = hidden_token_logprobs(hidden, weight, labels, bias, 0.7, 4, entropy=True, impl="liger")
    grads = torch.autograd.grad((logp * probe).sum(), (hidden, weight, bias))
    assert calls == ["none"] and torch.equal(mask, mask2)
    torch.testing.assert_close(logp, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("overrides,message", [
    (["+model.logprob_impl=fused"], r"^model.logprob_impl: must be one of \('chunked', 'liger'\)"),
    (["+model.logprob_impl=liger"], r"^model.logprob_impl: liger replaces the memory-bounded head path"),
    (["+model.logprob_impl=liger", "+model.logprob_chunk=8"], r"^model.logprob_impl: liger needs the liger-kernel"),
])
def test_logprob_settings_are_checked_before_compute(overrides, message):
    from tests.conftest import compose
    from tms.config.validate import validate
    from tms.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        validate(compose(["experiment=smoke", *overrides]))
