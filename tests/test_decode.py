"""The dropping decoder (tms.generation.decode) against transformers' ``generate``: the same policy, the same
greedy sequences with rows finishing at different steps, and finished rows really leave the batch."""
import pytest
import torch

from tms.generation.decode import filter_top_p, next_tokens, sample_dropping_finished

VOCAB, PAD = 48, 0


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=PAD, attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).double().eval()


def prompts():
    """Left-padded prompts of different lengths (the padding the harvest batches have)."""
    from tms.generation.hf import left_pad

    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in (7, 3, 5, 1, 6, 4)]
    return left_pad(seqs, PAD)


def hf_generate(model, ids, mask, eos, max_new, temperature, top_p):
    from transformers import GenerationConfig

    sample = temperature > 0
    cfg = GenerationConfig(do_sample=sample, temperature=temperature if sample else 1.0, top_p=top_p if sample else 1.0,
                           top_k=0, max_new_tokens=max_new, eos_token_id=eos or None, pad_token_id=PAD)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1]:].tolist()
    cut = []
    for row in out:
        end = next((i for i, t in enumerate(row) if t in eos), None)
        cut.append(row if end is None else row[: end + 1])
    return cut


def slow_top_p(scores, top_p):
    """Row by row: keep the most likely tokens, in descending order, until their mass reaches ``top_p``
    (a token is kept when the mass of the tokens *less* likely than it is < 1 - top_p)."""
    out = scores.clone()
    for r in range(scores.shape[0]):
        p = scores[r].softmax(-1)
        for v in range(scores.shape[1]):
            below = p[p < p[v]].sum() + p[v]  # ascending cumulative mass up to v (no ties in random scores)
            if below <= 1 - top_p and p[v] < p.max():
                out[r, v] = -float("inf")
    return out


def test_top_p_filter_matches_a_slow_reference_and_keeps_the_top_token():
    torch.manual_seed(2)
    scores = torch.randn(5, 17, dtype=torch.float64) * 2
    for top_p in (0.05, 0.5, 0.9, 0.999):
        assert torch.equal(filter_top_p(scores, top_p), slow_top_p(scores, top_p))
    assert (filter_top_p(scores, 1e-9) > -float("inf")).sum(-1).tolist() == [1] * 5
    assert torch.equal(filter_top_p(scores, 1.0), scores)


def test_greedy_is_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.0]])
    assert next_tokens(logits, 0.0, 0.5).tolist() == [1, 0]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampling_draws_what_generate_draws_for_the_same_seed(model, temperature, top_p):
    """No row finishes (no eos): every step's batch is generate's, so the draws are identical token for token."""
    ids, mask = prompts()
    torch.manual_seed(5)
    ours = sample_dropping_finished(model, ids, mask, [], 12, temperature, top_p)
    torch.manual_seed(5)
    theirs = hf_generate(model, ids, mask, [], 12, temperature, top_p)
    assert ours == theirs and all(len(r) == 12 for r in ours)


def early_eos(model, ids, mask):
    """Two eos ids that make rows stop at different steps (some rows may not stop at all)."""
    free = hf_generate(model, ids, mask, [], 16, 0.0, 1.0)
    return sorted({free[0][2], free[3][6]})


def forward_rows(model, *args, **kwargs):
    """The rows of every forward ``sample_dropping_finished(model, *args, **kwargs)`` makes, and its output."""
    rows = []
    hook = model.register_forward_hook(lambda m, a, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        return rows, sample_dropping_finished(model, *args, **kwargs)
    finally:
        hook.remove()


@pytest.mark.parametrize("compact_fraction", [0.0, 0.125, 0.6])
def test_greedy_rows_that_finish_early_leave_the_batch_and_the_others_are_unchanged(model, compact_fraction):
    """0.6: finished rows wait in the batch (their tokens discarded) until they are 60% of it."""
    ids, mask = prompts()
    eos = early_eos(model, ids, mask)
    ours = sample_dropping_finished(model, ids, mask, eos, 16, 0.0, 1.0, compact_fraction=compact_fraction)
    assert ours == hf_generate(model, ids, mask, eos, 16, 0.0, 1.0)
    lengths = sorted(len(r) for r in ours)
    assert lengths[0] <= 3 and len(set(lengths)) > 1  # the early stop happened and not every row stopped with it


def test_a_finished_row_costs_no_more_forward_rows(model):
    """Compacting at every step, the rows the forwards compute sum to the sequences' lengths; lazily, to more,
    but still fewer than generate's rows x steps."""
    ids, mask = prompts()
    eos = early_eos(model, ids, mask)
    rows, out = forward_rows(model, ids, mask, eos, 16, 0.0, 1.0, compact_fraction=0)
    assert sum(rows) == sum(len(r) for r in out) and rows[0] == ids.shape[0]
    lazy, _ = forward_rows(model, ids, mask, eos, 16, 0.0, 1.0, compact_fraction=0.6)
    assert sum(rows) < sum(lazy) < ids.shape[0] * len(lazy) and lazy[-1] < ids.shape[0]


def test_a_model_that_ignores_the_cache_is_refused(model):
    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    ids, mask = prompts()
    with pytest.raises(RuntimeError, match="did not fill the KV cache"):
        sample_dropping_finished(NoCache(model), ids, mask, [], 4, 0.0, 1.0)


def test_the_hf_generator_decoders_agree_greedily_and_refuse_an_unknown_one(model):
    from types import SimpleNamespace

    from tms.generation.base import SamplingParams
    from tms.generation.hf import HFGenerator

    tok = SimpleNamespace(eos_token_id=7, pad_token_id=PAD, decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    seqs = [[3, 4, 5], [9], [10, 11, 12, 13], [5, 5]]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    a = HFGenerator(model, tok, batch_size=3).generate(seqs, 2, greedy, seed=0)
    b = HFGenerator(model, tok, batch_size=3, decode="generate").generate(seqs, 2, greedy, seed=0)
    assert [(c.token_ids, c.finish_reason, c.text) for c in a] == [(c.token_ids, c.finish_reason, c.text) for c in b]
    with pytest.raises(ValueError, match="decode='beam'"):
        HFGenerator(model, tok, decode="beam")
