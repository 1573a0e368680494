"""Tests for tms.objectives.policy_gradient: hand-computed advantages, loop references for the per-token losses, gradients."""
import math

import pytest
import torch

from tms.objectives.nll import IGNORE_INDEX, token_logprobs
from tms.objectives.policy_gradient import (
    aggregate,
    clipped_policy_loss,
    ema_update,
    grpo_loss,
    group_advantages,
    kl_penalty_k3,
    leave_one_out_advantages,
    masked_entropy,
    reinforce_advantages,
)

MODES = ("token_mean", "sequence_mean")


# ---------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.0, 1.0, 2.0, 5.0])
    # group 1: mean 0.5, unbiased std sqrt(1/3) = 0.5773503 -> +-0.5 / 0.5774503 = +-0.8658754
    a1 = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    # group 3: mean 2, deviations (-2, -1, 0, 3), unbiased std sqrt(14/3) = 2.1602469
    s3 = math.sqrt(14 / 3) + 1e-4
    expected = torch.tensor([a1, -a1, -a1, a1, 0.0, 0.0, 0.0, 0.0, -2 / s3, -1 / s3, 0.0, 3 / s3])
    assert abs(a1 - 0.8658754) < 1e-6
    torch.testing.assert_close(group_advantages(rewards, 4), expected)
    # same numbers from the [P, G] layout, shape preserved
    torch.testing.assert_close(group_advantages(rewards.view(3, 4), 4), expected.view(3, 4))


def test_group_advantages_dr_grpo_unscaled():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0], [0.0, 1.0, 2.0, 5.0]])
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [-2.0, -1.0, 0.0, 3.0]])
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False), expected)


def test_equal_rewards_give_exactly_zero():
    # mean of eight 0.3f is not 0.3f bit for bit: naive (r - mean) / (0 + 1e-4) gives ~3e-4, not 0
    rewards = torch.full((2, 8), 0.3)
    rewards[1] = torch.arange(8.0)
    for scale in (True, False):
        adv = group_advantages(rewards, 8, scale=scale)
        assert not torch.isnan(adv).any()
        assert torch.equal(adv[0], torch.zeros(8))
        assert (adv[1] != 0).all()
    assert torch.equal(leave_one_out_advantages(rewards, 8)[0], torch.zeros(8))


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size=4"):
        group_advantages(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(torch.zeros(3), 1)


def test_leave_one_out_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 2.0, 5.0])
    # group 1: sum 2 -> 1 - 1/3, 0 - 2/3; group 2: sum 8 -> 0 - 8/3, 1 - 7/3, 2 - 6/3, 5 - 3/3
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, -8 / 3, -4 / 3, 0.0, 4.0])
    torch.testing.assert_close(leave_one_out_advantages(rewards, 4), expected)


def test_ema_baseline_sequence_by_hand():
    b = None
    seen = []
    for batch_mean in (1.0, 0.0, 0.5):
        b = ema_update(b, batch_mean, momentum=0.9)
        seen.append(b)
    # first batch initialises; then 0.9 * 1.0 + 0.1 * 0.0 = 0.9; then 0.9 * 0.9 + 0.1 * 0.5 = 0.86
    assert seen == pytest.approx([1.0, 0.9, 0.86])
    torch.testing.assert_close(reinforce_advantages(torch.tensor([1.0, 0.0]), b), torch.tensor([0.14, -0.86]))
    with pytest.raises(ValueError, match="momentum"):
        ema_update(0.0, 1.0, momentum=1.5)


# ---------------------------------------------------------------- aggregation


def test_aggregate_by_hand_ignores_masked_values_and_empty_rows():
    nan = float("nan")
    per_token = torch.tensor([[1.0, 2.0, nan], [4.0, nan, nan], [nan, nan, nan]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    torch.testing.assert_close(aggregate(per_token, mask, "token_mean"), torch.tensor(7 / 3))
    torch.testing.assert_close(aggregate(per_token, mask, "sequence_mean"), torch.tensor((1.5 + 4.0) / 2))


def test_aggregate_errors():
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool), "sum")
    with pytest.raises(ValueError, match="no completion token"):
        aggregate(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool), "token_mean")


# ---------------------------------------------------------------- per-token losses against loops


def _ragged_inputs(seed: int = 0, batch: int = 5, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    starts, lengths = [0, 2, 3, 1, 4], [9, 5, 1, 6, 3]
    for b in range(batch):
        mask[b, starts[b] : starts[b] + lengths[b]] = True
    logp_old = -torch.rand(batch, length, generator=g) * 3
    # log-ratios of std 0.5: many tokens fall outside [0.8, 1.2]
    logp_new = logp_old + 0.5 * torch.randn(batch, length, generator=g)
    logp_ref = logp_old + 0.3 * torch.randn(batch, length, generator=g)
    advantages = torch.tensor([1.3, -0.7, 2.0, -1.5, 0.4])
    # values at masked positions must not matter
    garbage = ~mask
    logp_new, logp_old, logp_ref = (
        t.masked_fill(garbage, v) for t, v in ((logp_new, 7.0), (logp_old, -90.0), (logp_ref, 60.0))
    )
    return logp_new, logp_old, logp_ref, advantages, mask


def _loop_reference(logp_new, logp_old, logp_ref, advantages, mask, eps_low, eps_high, beta, mode):
    per_seq, all_tokens, kls, n_clipped, ratios = [], [], [], 0, []
    for b in range(mask.shape[0]):
        seq = []
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(logp_new[b, t].item() - logp_old[b, t].item())
            a = advantages[b].item()
            unclipped, clipped = ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a
            d = logp_ref[b, t].item() - logp_new[b, t].item()
            kl = math.exp(d) - d - 1
            seq.append(-min(unclipped, clipped) + beta * kl)
            kls.append(kl)
            ratios.append(ratio)
            n_clipped += clipped < unclipped
        all_tokens += seq
        per_seq.append(sum(seq) / len(seq))
    loss = sum(all_tokens) / len(all_tokens) if mode == "token_mean" else sum(per_seq) / len(per_seq)
    n = len(all_tokens)
    return loss, n_clipped / n, sum(ratios) / n, sum(kls) / n


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_clipped_policy_loss_matches_loop(mode, eps_high):
    logp_new, logp_old, logp_ref, adv, mask = _ragged_inputs()
    high = 0.2 if eps_high is None else eps_high
    ref_loss, ref_clip, ref_ratio, _ = _loop_reference(logp_new, logp_old, logp_ref, adv, mask, 0.2, high, 0.0, mode)
    loss, stats = clipped_policy_loss(logp_new, logp_old, adv, mask, 0.2, eps_high, mode)
    assert 0 < ref_clip < 1  # the inputs do exercise both branches
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert stats["clip_fraction"].item() == pytest.approx(ref_clip)
    assert stats["ratio_mean"].item() == pytest.approx(ref_ratio, rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_grpo_loss_with_k3_matches_loop(mode):
    logp_new, logp_old, logp_ref, adv, mask = _ragged_inputs(seed=1)
    ref_loss, ref_clip, _, ref_kl = _loop_reference(logp_new, logp_old, logp_ref, adv, mask, 0.2, 0.2, 0.04, mode)
    loss, stats = grpo_loss(logp_new, logp_old, logp_ref, adv, mask, 0.2, None, 0.04, mode)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert stats["kl"].item() == pytest.approx(ref_kl, rel=1e-5)
    assert stats["clip_fraction"].item() == pytest.approx(ref_clip)
    # beta = 0: no KL term, no KL stat, same as the plain clipped loss
    loss0, stats0 = grpo_loss(logp_new, logp_old, logp_ref, adv, mask, beta=0.0, aggregation=mode)
    assert "kl" not in stats0
    assert loss0.item() == pytest.approx(clipped_policy_loss(logp_new, logp_old, adv, mask, aggregation=mode)[0].item())
    with pytest.raises(ValueError, match="logp_ref"):
        grpo_loss(logp_new, logp_old, None, adv, mask, beta=0.1)


def test_k3_matches_loop_and_is_nonnegative():
    logp_new, _, logp_ref, _, mask = _ragged_inputs(seed=2)
    kl = kl_penalty_k3(logp_new, logp_ref, mask)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            d = logp_ref[b, t].item() - logp_new[b, t].item()
            expected = math.exp(d) - d - 1 if mask[b, t] else 0.0
            assert kl[b, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert (kl >= 0).all()
    assert torch.equal(kl_penalty_k3(logp_ref, logp_ref, mask), torch.zeros_like(kl))


def test_clip_branches_by_hand():
    # one completion token per row; column 1 is masked and holds values that would dominate if used
    ratios = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    logp_new = torch.stack([ratios.log(), torch.full((5,), 5.0)], dim=1).requires_grad_()
    logp_old = torch.zeros(5, 2)
    mask = torch.tensor([[True, False]] * 5)
    loss, stats = clipped_policy_loss(logp_new, logp_old, adv, mask, epsilon_low=0.2)
    # objective per row: clip 1.2 (A>0, r>1.2), 0.5 (A>0, r<0.8: unclipped is the min),
    # -0.8 (A<0, r<0.8: clip), -1.5 (A<0, r>1.2: unclipped is the min), 1.1 (inside)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 0.8 - 1.5 + 1.1) / 5)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)
    assert stats["ratio_mean"].item() == pytest.approx(5.1 / 5)
    loss.backward()
    # d loss / d logp = -r A / 5 where the unclipped branch is active, 0 where the clipped one is
    torch.testing.assert_close(logp_new.grad[:, 0], torch.tensor([0.0, -0.1, 0.0, 0.3, -0.22]))
    assert torch.equal(logp_new.grad[:, 1], torch.zeros(5))


def test_epsilon_high_widens_only_the_upper_clip():
    logp_new = torch.tensor([[1.25], [0.75]]).log()
    adv, mask, old = torch.tensor([1.0, -1.0]), torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, 1)
    sym_loss, sym = clipped_policy_loss(logp_new, old, adv, mask, epsilon_low=0.2)
    high_loss, high = clipped_policy_loss(logp_new, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
    assert sym["clip_fraction"].item() == pytest.approx(1.0)  # 1.25 > 1.2 with A>0; 0.75 < 0.8 with A<0
    assert high["clip_fraction"].item() == pytest.approx(0.5)  # 1.25 < 1.28 is no longer clipped
    assert sym_loss.item() == pytest.approx(-(1.2 - 0.8) / 2)
    assert high_loss.item() == pytest.approx(-(1.25 - 0.8) / 2)


# ---------------------------------------------------------------- gradients through logits


def _logits_and_labels(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab = 3, 8, 6
    logits = torch.randn(batch, length, vocab, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    # prompt of 2 / 3 / 1 tokens, completions of ragged length, right padding
    for b, (prompt, end) in enumerate([(2, 8), (3, 5), (1, 3)]):
        labels[b, :prompt] = IGNORE_INDEX
        labels[b, end:] = IGNORE_INDEX
    return logits, labels


def _full_logprobs(logits, labels):
    """log p of the labels at every position, masked ones included (nothing zeroed)."""
    targets = labels[:, 1:].clamp(min=0)
    return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", ["token_logprobs", "unmasked"])
def test_gradient_flows_only_through_completion_tokens(mode, source):
    logits, labels = _logits_and_labels()
    logp, mask = token_logprobs(logits, labels)
    if source == "unmasked":  # the loss functions alone must do the masking
        logp = _full_logprobs(logits, labels)
    # garbage at masked positions: exp(logp - logp_old) and exp(logp_ref - logp) overflow to inf there
    logp_old = logp.detach().masked_fill(~mask, -100.0)
    logp_ref = (logp.detach() + 0.3).masked_fill(~mask, 100.0)
    adv = torch.tensor([0.9, -1.1, 0.6])
    loss, _ = grpo_loss(logp, logp_old, logp_ref, adv, mask, beta=0.1, aggregation=mode)
    loss.backward()
    grad = logits.grad[:, :-1]
    assert torch.isfinite(loss)
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
    assert (grad[mask].abs().sum(dim=-1) > 0).all()
    assert torch.equal(logits.grad[:, -1], torch.zeros_like(logits.grad[:, -1]))


@pytest.mark.parametrize("mode", MODES)
def test_on_policy_gradient_equals_vanilla_policy_gradient(mode):
    logits, labels = _logits_and_labels(seed=3)
    adv = torch.tensor([1.4, -0.3, 0.8])
    logp, mask = token_logprobs(logits, labels)
    loss, stats = clipped_policy_loss(logp, logp.detach(), adv, mask, aggregation=mode)
    (grad_clipped,) = torch.autograd.grad(loss, logits)
    assert stats["clip_fraction"].item() == 0.0 and stats["ratio_mean"].item() == pytest.approx(1.0)

    logp, mask = token_logprobs(logits, labels)
    m = mask.float()
    weighted = -adv[:, None] * logp * m
    vanilla = weighted.sum() / m.sum() if mode == "token_mean" else (weighted.sum(1) / m.sum(1)).mean()
    (grad_vanilla,) = torch.autograd.grad(vanilla, logits)
    assert grad_vanilla.abs().sum() > 0
    torch.testing.assert_close(grad_clipped, grad_vanilla)


def test_old_and_reference_logprobs_are_constants():
    logits, labels = _logits_and_labels(seed=5)
    adv = torch.tensor([1.0, -0.5, 0.7])
    grads = []
    for detach in (True, False):  # forgetting .detach() at the call site must not change the gradient
        logp, mask = token_logprobs(logits, labels)
        old, ref = (logp.detach(), logp.detach() + 0.2) if detach else (logp, logp + 0.2)
        loss, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.1)
        grads.append(torch.autograd.grad(loss, logits)[0])
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


# ---------------------------------------------------------------- entropy


def test_masked_entropy_matches_categorical():
    logits, labels = _logits_and_labels(seed=4)
    logits = logits.detach()
    _, mask = token_logprobs(logits, labels)
    expected = torch.distributions.Categorical(logits=logits[:, :-1][mask]).entropy().mean()
    torch.testing.assert_close(masked_entropy(logits, labels), expected)
    # uniform over V: log V; masked positions (here: made extremely peaked) do not count
    uniform = torch.zeros_like(logits)
    uniform[:, :-1][~mask] = torch.tensor([50.0, 0, 0, 0, 0, 0])
    torch.testing.assert_close(masked_entropy(uniform, labels), torch.tensor(math.log(6)))


def test_masked_entropy_is_finite_with_minus_inf_logits():
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    torch.testing.assert_close(masked_entropy(logits, labels), torch.tensor(math.log(2)))
