"""Chat formatting, prompt masking and padding."""
import torch

from tms.data.formatting import collate_right_padded, completion_ids, join_and_truncate, prompt_ids
from tms.objectives.nll import IGNORE_INDEX, masked_nll


def test_prompt_and_completion_ids_follow_the_chat_template(smoke_base):
    from tms.models.loading import load_tokenizer

    tok = load_tokenizer(smoke_base)
    p = prompt_ids(tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add 1 2"}])
    assert tok.decode(p) == "<|system|>be brief<|user|>add 1 2<|assistant|>"
    c = completion_ids(tok, "3")
    assert c[-1] == tok.eos_token_id and tok.decode(c[:-1]) == "3"
    # joint rendering of the conversation equals prompt + completion (up to the final eos)
    full = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "add 1 2"},
                                    {"role": "assistant", "content": "3"}], tokenize=True, return_dict=False)
    assert list(full) == p + c


def test_labels_are_ignore_index_exactly_on_prompt_and_padding():
    items = [([5, 6, 7, 8, 9], 2), ([1, 2, 3], 1), ([4, 4, 4, 4, 4, 4, 4], 7 - 3)]
    batch = collate_right_padded(items, pad_id=0)
    assert batch["input_ids"].shape == (3, 7)
    for row, (ids, n_prompt) in enumerate(items):
        labels = batch["labels"][row].tolist()
        mask = batch["attention_mask"][row].tolist()
        for i in range(7):
            on_completion = n_prompt <= i < len(ids)
            assert (labels[i] != IGNORE_INDEX) == on_completion
            if on_completion:
                assert labels[i] == ids[i]
            assert mask[i] == int(i < len(ids))


def test_truncation_keeps_the_prompt_and_refuses_empty_completions():
    assert join_and_truncate([1, 2, 3], [4, 5, 6], max_length=5) == ([1, 2, 3, 4, 5], 3)
    assert join_and_truncate([1, 2, 3], [4, 5], max_length=3) is None
    assert join_and_truncate([1, 2, 3], [], max_length=10) is None


def test_masked_nll_matches_a_loop_over_tokens_and_refuses_empty_batches():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 1], [IGNORE_INDEX, 2, 6, IGNORE_INDEX, IGNORE_INDEX]])
    loss, n = masked_nll(logits, labels)
    total, count = 0.0, 0
    for b in range(2):
        for i in range(1, 5):
            if labels[b, i] != IGNORE_INDEX:
                total -= torch.log_softmax(logits[b, i - 1], -1)[labels[b, i]].item()
                count += 1
    assert int(n) == count == 5
    assert abs(loss.item() - total / count) < 1e-5
    import pytest

    with pytest.raises(ValueError, match="no completion token"):
        masked_nll(logits, torch.full_like(labels, IGNORE_INDEX))
