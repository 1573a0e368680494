"""Padding-free packed batches (tms.data.packing, tms.models.varlen, ``sft.packing``) against the right-padded batch
of the same sequences, in float64: the same per-token log-probs, summed NLL and gradients (full-logits and chunked
head paths, grouped-query attention), and a Stage 1 trained packed ends where the padded one does."""
import pytest
import torch

from tms.data.formatting import Collator, collate_right_padded
from tms.data.packing import collate_packed, is_packed, sequences_in
from tms.models.varlen import IMPLEMENTATION, packed_attention, packed_kwargs, varlen_sdpa
from tms.objectives.head_logprobs import model_token_logprobs
from tms.objectives.nll import IGNORE_INDEX

ITEMS_SHAPE = [(7, 3), (12, 5), (3, 1), (9, 4), (12, 11)]  # (length, prompt tokens): the longest twice, a 1-token target


def items(V=41, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(1, V, (n,), generator=g).tolist(), p) for n, p in ITEMS_SHAPE]


def tiny_lm(V=41, heads=4, kv_heads=2, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=32, tie_word_embeddings=False,
                      attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).double()


def test_the_packed_row_lays_sequences_end_to_end_with_restarting_positions():
    its = items()
    b = collate_packed(its)
    lengths = [n for n, _ in ITEMS_SHAPE]
    assert b["input_ids"].shape == (1, sum(lengths)) and is_packed(b) and sequences_in(b) == len(its)
    assert b["input_ids"][0].tolist() == [t for seq, _ in its for t in seq]
    assert b["cu_seq_lens"].dtype == torch.int32 and b["cu_seq_lens"].tolist() == [0, 7, 19, 22, 31, 43]
    assert int(b["max_length"]) == 12
    assert b["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    expected = [IGNORE_INDEX if i < p else seq[i] for seq, p in its for i in range(len(seq))]
    assert b["labels"][0].tolist() == expected
    padded = collate_right_padded(its, pad_id=0)
    assert not is_packed(padded) and sequences_in(padded) == len(its)
    assert int((b["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"] != IGNORE_INDEX).sum())
    assert Collator(0, packed=True)(its).keys() == b.keys() and Collator(0)(its).keys() == padded.keys()
    with pytest.raises(ValueError, match="empty batch"):
        collate_packed([])


def packed_forward(model, batch, chunk=None):
    forward = {"position_ids": batch["position_ids"], **packed_kwargs(batch["cu_seq_lens"], batch["max_length"])}
    with packed_attention(model):
        return model_token_logprobs(model, batch["input_ids"], None, batch["labels"], chunk=chunk, forward_kwargs=forward)


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (2, 2)])
def test_packed_logprobs_and_gradients_equal_the_padded_batch(chunk, heads, kv_heads):
    model = tiny_lm(heads=heads, kv_heads=kv_heads)
    its = items()
    pad, pk = collate_right_padded(its, pad_id=0), collate_packed(its)
    params = list(model.parameters())
    ref, ref_mask, _ = model_token_logprobs(model, pad["input_ids"], pad["attention_mask"], pad["labels"], chunk=chunk)
    ref_grads = torch.autograd.grad(-ref.sum(), params)
    logp, mask, _ = packed_forward(model, pk, chunk)
    grads = torch.autograd.grad(-logp.sum(), params)
    assert model.config._attn_implementation == "sdpa"  # switched back after the packed forward
    assert logp.shape == (1, pk["input_ids"].shape[1] - 1)
    # row-major order of the padded batch's labelled tokens is the packed row's order: token for token equal
    torch.testing.assert_close(logp[mask], ref[ref_mask], rtol=0, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


def test_varlen_attention_is_each_sequence_alone():
    """The slow reference: every sequence's attention computed by itself, causal, then concatenated."""
    g = torch.Generator().manual_seed(3)
    lengths = [4, 1, 6]
    cu = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
    q = torch.randn(1, 4, 11, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 11, 8, generator=g, dtype=torch.float64) for _ in range(2))
    out, _ = varlen_sdpa(None, q, k, v, cu_seq_lens_q=cu, max_length_q=6, scaling=0.5)
    ref = []
    for s, n in zip(cu[:-1].tolist(), lengths):
        qs, ks, vs = q[0, :, s:s + n], k[0, :, s:s + n].repeat_interleave(2, 0), v[0, :, s:s + n].repeat_interleave(2, 0)
        scores = (qs @ ks.transpose(-1, -2)) * 0.5 + torch.full((n, n), float("-inf"), dtype=q.dtype).triu(1)
        ref.append((scores.softmax(-1) @ vs).transpose(0, 1))  # [n, H, d]
    torch.testing.assert_close(out[0], torch.cat(ref), rtol=0, atol=1e-12)


def test_varlen_attention_refuses_what_it_cannot_compute():
    q = torch.zeros(1, 2, 5, 4)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="packed batches only"):
        varlen_sdpa(None, q, q, q)
    with pytest.raises(NotImplementedError, match="sft.packing=false"):
        varlen_sdpa(None, q, q, q, cu_seq_lens_q=cu, sliding_window=4)
    with pytest.raises(ValueError, match="one row"):
        varlen_sdpa(None, q.expand(2, -1, -1, -1), q, q, cu_seq_lens_q=cu)
    model = tiny_lm()
    with pytest.raises(RuntimeError, match="boom"), packed_attention(model):
        assert model.config._attn_implementation == IMPLEMENTATION
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_the_datamodule_serves_packed_batches(smoke_base):
    from tests.conftest import compose
    from hydra.utils import instantiate

    from tms.data.datamodule import PostTrainDataModule
    from tms.models.loading import load_tokenizer

    cfg = compose(["experiment=smoke"])
    tok = load_tokenizer(smoke_base)
    batches = {}
    for packing in (False, True):
        dm = PostTrainDataModule(instantiate(cfg.data.task), batch_size=8, max_length=64, seed=0,
                                 packing=packing).connect(tok)
        batches[packing] = (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader())))
    for (pad, pk) in zip(batches[False], batches[True]):
        assert is_packed(pk) and not is_packed(pad) and sequences_in(pk) == sequences_in(pad) == 8
        real = pad["attention_mask"].bool()
        assert pk["input_ids"][0].tolist() == pad["input_ids"][real].tolist()  # the same tokens, padding removed
        assert pk["labels"][0].tolist() == pad["labels"][real].tolist()


def test_a_packed_stage1_ends_where_the_padded_one_does(smoke_cache, tmp_path, monkeypatch):
    """``sft.packing`` is its own cache key (other float rounding); the trained weights, the logged loss and the
    trajectory's PLD agree with padded training to float32 rounding."""
    from safetensors.torch import load_file

    from tests.conftest import compose
    from tms.cli.common import setup
    from tms.stages.base_model import resolve_base
    from tms.stages.common import final_checkpoint
    from tms.stages.sft import run_sft

    import tms.data.formatting as formatting

    calls = []
    monkeypatch.setattr(formatting, "collate_packed", lambda items: calls.append(len(items)) or collate_packed(items))
    stages = {}
    for packing in (False, True):  # (a clip value no other test trains with: both stages are built here)
        cfg = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "method=sft", "sft.num_checkpoints=2",
                       "sft.gradient_clip_val=0.5", f"sft.packing={str(packing).lower()}"])
        setup(cfg, tmp_path / f"run-{packing}")
        stages[packing] = run_sft(cfg, resolve_base(cfg))
        assert bool(calls) == packing  # training and the PLD passes of the packed run only
    pad, pk = stages[False], stages[True]
    assert pad.hash != pk.hash and "packing" not in pad.manifest()["key"]["train"]["sft"]
    a, b = (load_file(f"{final_checkpoint(s).path}/model.safetensors") for s in (pad, pk))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
    traj = [s.manifest()["info"]["trajectory"]["checkpoints"]["2"] for s in (pad, pk)]
    assert traj[0]["pld"] == pytest.approx(traj[1]["pld"], rel=1e-4)


@pytest.mark.parametrize("value", ["'yes'", "1"])
def test_a_packing_flag_that_is_not_a_bool_is_refused_before_compute(value):
    from tests.conftest import compose
    from tms.config.validate import validate
    from tms.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^sft.packing: must be true or false"):
        validate(compose(["experiment=smoke", f"sft.packing={value}"]))
