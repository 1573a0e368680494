"""tms.evaluation.metrics against brute-force references and hand-computed values."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from tms.evaluation import metrics as M
from tms.objectives import kl as K

# ---------------------------------------------------------------------------------------------- pass@k


def _pass_at_k_brute(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of the n samples that hold at least one of the c correct ones."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_of_all_subsets():
    checked = 0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert M.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute(n, c, k), abs=1e-12), (n, c, k)
                checked += 1
    assert checked == sum((n + 1) * n for n in range(1, 9))


def test_pass_at_k_edge_cases_and_large_n():
    assert M.pass_at_k(10, 0, 3) == 0.0
    assert M.pass_at_k(10, 10, 3) == 1.0
    assert M.pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k
    assert M.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert M.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    exact = 1 - Fraction(math.comb(990, 100), math.comb(1000, 100))
    assert M.pass_at_k(1000, 10, 100) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "name"), [(0, 0, 1, "n"), (5, 1, 0, "k"), (5, 1, 6, "k"), (5, -1, 1, "c"), (5, 6, 1, "c")]
)
def test_pass_at_k_validates_arguments(n, c, k, name):
    with pytest.raises(ValueError, match=f"{name} must"):
        M.pass_at_k(n, c, k)


def test_mean_pass_at_k_ragged_prompts_and_threshold():
    correct = [[1, 0, 0, 0], [True, True], [0.2, 0.7, 0.5]]  # c = 1, 2, 2 (0.5 counts, 0.2 does not)
    out = M.mean_pass_at_k(correct, ks=[1, 2])
    assert set(out) == {1, 2}
    assert out[1] == pytest.approx((0.25 + 1.0 + 2 / 3) / 3)
    assert out[2] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert M.mean_pass_at_k([[0.49, 0.49]], ks=[2]) == {2: 0.0}
    with pytest.raises(ValueError, match="k=3.*prompt 1.*n=2"):
        M.mean_pass_at_k(correct, ks=[3])
    with pytest.raises(ValueError, match="empty"):
        M.mean_pass_at_k([], ks=[1])


# ---------------------------------------------------------------------------------------------- SC-Acc


def test_majority_vote_rules():
    assert M.majority_vote(["a", "b", "b"]) == "b"
    assert M.majority_vote(["1", "2", "2", "1"]) == "1"  # tie: first to appear
    assert M.majority_vote(["2", "1", "1", "2"]) == "2"
    assert M.majority_vote([None, None, "3"]) == "3"  # None never wins against an answer
    assert M.majority_vote([None, "x", None, "y", "y"]) == "y"
    assert M.majority_vote([None, None]) is None
    assert M.majority_vote([]) is None


def test_sc_accuracy_hand_built():
    answers = [
        ["4", "4", "5"],  # majority "4", verified correct -> hit
        ["7", "8", "8"],  # majority "8", wrong -> miss
        [None, None, "2"],  # None ignored, "2" correct -> hit
        [None, None, None],  # no answer -> miss
        ["x", "y"],  # tie -> "x", which is wrong -> miss
        ["y", "x"],  # tie -> "y", correct -> hit
        ["9", "9"],  # one of the "9" samples verified correct -> hit
    ]
    correct = [[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1], [True, False], [0.0, 1.0]]
    assert M.sc_accuracy(answers, correct) == pytest.approx(4 / 7)
    assert M.sc_accuracy([["a", "b", "b"]], [[1.0, 0.4, 0.4]]) == 0.0
    with pytest.raises(ValueError, match="prompt 0"):
        M.sc_accuracy([["a", "b"]], [[1]])
    with pytest.raises(ValueError, match="correct_per_prompt"):
        M.sc_accuracy([["a"]], [])


# ---------------------------------------------------------------------------------------------- entropy


def test_answer_entropy_hand_computed():
    assert M.answer_entropy(["a", "a", "b", "b"]) == pytest.approx(math.log(2))
    h0 = M.answer_entropy(["a"] * 4)
    assert h0 == 0.0 and math.copysign(1.0, h0) == 1.0
    assert M.answer_entropy(["a", "b", "c"]) == pytest.approx(math.log(3))
    assert M.answer_entropy(["a", None, None, "b"]) == pytest.approx(1.5 * math.log(2))  # None is a category
    assert M.answer_entropy([None, None]) == 0.0
    assert M.answer_entropy(["None", None]) == pytest.approx(math.log(2))  # the string is not the missing answer
    assert M.mean_answer_entropy([["a", "b"], ["a", "a"]]) == pytest.approx(math.log(2) / 2)
    with pytest.raises(ValueError):
        M.answer_entropy([])


# ---------------------------------------------------------------------------------------------- F, S_xfer

BASE = {"arc_c": 66.0, "hotpotqa": 45.0, "safetybench": 42.0}
POST = {"arc_c": 60.0, "hotpotqa": 50.0, "safetybench": 40.0}


def test_deltas_and_forgetting_score():
    assert M.deltas(POST, BASE) == {"arc_c": -6.0, "hotpotqa": 5.0, "safetybench": -2.0}
    assert M.forgetting_score(POST, BASE) == pytest.approx(-8 / 3)  # the +5 does not offset; signed mean is -1
    assert M.forgetting_score(POST, BASE, ["arc_c", "hotpotqa"]) == pytest.approx(-3.0)
    assert M.forgetting_score(BASE, BASE) == 0.0
    assert M.forgetting_score({"a": 0.9}, {"a": 0.5}) == 0.0


def test_forgetting_score_key_errors_name_the_benchmark():
    with pytest.raises(ValueError, match="'hotpotqa'.*scores"):
        M.forgetting_score({"arc_c": 60.0, "safetybench": 40.0}, BASE)
    with pytest.raises(ValueError, match="'mmlu'.*base_scores"):
        M.forgetting_score({**POST, "mmlu": 1.0}, BASE)
    with pytest.raises(ValueError, match="'ifeval'"):
        M.forgetting_score(POST, BASE, ["arc_c", "ifeval"])
    with pytest.raises(ValueError, match="twice"):
        M.forgetting_score(POST, BASE, ["arc_c", "arc_c"])
    with pytest.raises(ValueError, match="empty"):
        M.forgetting_score(POST, BASE, [])


def test_cross_task_transfer():
    base = {"math": 50.0, "gsm8k": 75.0, "ifeval": 65.0}
    post = {"math": 70.0, "gsm8k": 80.0, "ifeval": 62.0}
    assert M.cross_task_transfer(post, base, ["gsm8k", "ifeval"]) == pytest.approx(1.0)  # (5 - 3) / 2, signed
    assert M.cross_task_transfer(post, base, ["ifeval"]) == pytest.approx(-3.0)
    assert M.cross_task_transfer(post, base, []) is None
    with pytest.raises(ValueError, match="'countdown'"):
        M.cross_task_transfer(post, base, ["countdown"])


# ---------------------------------------------------------------------------------------------- KL


def _ragged(seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = [3, 0, 7, 1, 5]
    pol = [np.log(rng.uniform(0.05, 1.0, size=t)) for t in lengths]
    base = [np.log(rng.uniform(0.05, 1.0, size=t)) for t in lengths]
    return pol, base, lengths


def test_sequence_kl_matches_python_loop_on_ragged_inputs():
    pol, base, _ = _ragged()
    expected = [sum(float(p) - float(b) for p, b in zip(ps, bs)) for ps, bs in zip(pol, base)]
    got = M.sequence_kl(pol, base)
    assert got.dtype == torch.float64 and got.shape == (5,)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert M.sequence_kl([torch.tensor(p) for p in pol], [list(b) for b in base]).tolist() == pytest.approx(expected)
    k3 = [sum(math.exp(b - p) - 1 - (b - p) for p, b in zip(ps.tolist(), bs.tolist())) for ps, bs in zip(pol, base)]
    assert M.sequence_kl(pol, base, estimator="k3").tolist() == pytest.approx(k3, abs=1e-12)


def test_sequence_kl_padded_with_mask_ignores_padding_values():
    pol, base, lengths = _ragged()
    n, length = len(lengths), max(lengths)
    lp = torch.full((n, length), float("-inf"))
    lb = torch.full((n, length), float("nan"))
    mask = torch.zeros(n, length, dtype=torch.bool)
    for j, t in enumerate(lengths):
        lp[j, :t], lb[j, :t], mask[j, :t] = torch.tensor(pol[j]), torch.tensor(base[j]), True
    assert M.sequence_kl(lp, lb, mask).tolist() == pytest.approx(M.sequence_kl(pol, base).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="mask"):
        M.sequence_kl(pol, base, mask)
    with pytest.raises(ValueError, match="sample 2"):
        M.sequence_kl(pol, [base[0], base[1], base[2][:-1], base[3], base[4]])


def test_kl_of_identical_logprobs_is_zero():
    pol, _, _ = _ragged()
    for est in ("k1", "k2", "k3"):
        assert M.sequence_kl(pol, pol, estimator=est).tolist() == [0.0] * 5
        out = M.kl_to_base(pol, pol, prompt_ids=[0, 0, 1, 1, 2], estimator=est)
        assert out == {"kl_seq": 0.0, "kl_token": 0.0, "kl_seq_per_prompt": 0.0}


def test_kl_to_base_sample_token_and_prompt_averages():
    # Per-token log-ratios 1, (1, 1), (1, 1, 1) and (10,): sequence KLs 1, 2, 3, 10 with 1, 2, 3, 1 tokens.
    pol = [[1.0], [1.0, 1.0], [1.0, 1.0, 1.0], [10.0]]
    base = [[0.0], [0.0, 0.0], [0.0, 0.0, 0.0], [0.0]]
    out = M.kl_to_base(pol, base, prompt_ids=["a", "a", "a", "b"])
    assert out["kl_seq"] == pytest.approx(16 / 4)
    assert out["kl_token"] == pytest.approx(16 / 7)
    assert out["kl_seq_per_prompt"] == pytest.approx((2.0 + 10.0) / 2)
    assert set(M.kl_to_base(pol, base)) == {"kl_seq", "kl_token"}
    with pytest.raises(ValueError, match="prompt_ids"):
        M.kl_to_base(pol, base, prompt_ids=["a"])
    with pytest.raises(ValueError, match="estimator"):
        M.kl_to_base(pol, base, estimator="k4")
    with pytest.raises(ValueError, match="token"):
        M.kl_to_base([[]], [[]])


P = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
Q = np.array([0.1, 0.2, 0.2, 0.2, 0.3])


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_estimators_against_exact_kl_of_categoricals(name):
    """Sample-mean of each estimator over y ~ P vs its exact expectation, within 5 standard errors."""
    fn = {"k1": K.kl_k1, "k2": K.kl_k2, "k3": K.kl_k3}[name]
    exact_kl = float(np.sum(P * np.log(P / Q)))
    per_category = fn(torch.tensor(np.log(P) - np.log(Q))).numpy()  # estimator value for each outcome y
    mean = float(np.sum(P * per_category))
    n = 200_000
    tol = 5 * math.sqrt(float(np.sum(P * (per_category - mean) ** 2)) / n)  # 5 standard errors of the mean
    if name == "k2":  # biased: E[k2] = E[log-ratio^2] / 2, which is not the KL for these far-apart P, Q
        assert mean == pytest.approx(0.5 * float(np.sum(P * np.log(P / Q) ** 2)), rel=1e-12)
        assert abs(mean - exact_kl) > 3 * tol  # the bias is resolvable at this sample size
    else:
        assert mean == pytest.approx(exact_kl, rel=1e-12)
    ys = np.random.default_rng(1234).choice(len(P), size=n, p=P)
    log_ratio = torch.tensor(np.log(P[ys]) - np.log(Q[ys]))
    assert abs(float(fn(log_ratio).mean()) - mean) < tol


def test_k2_is_close_to_kl_for_nearby_distributions():
    q_near = P * np.exp(0.05 * np.array([1.0, -1.0, 0.5, -0.5, 0.0]))
    q_near /= q_near.sum()
    exact_kl = float(np.sum(P * np.log(P / q_near)))
    k2_mean = float(np.sum(P * K.kl_k2(torch.tensor(np.log(P / q_near))).numpy()))
    assert k2_mean == pytest.approx(exact_kl, rel=0.05)


def test_k3_is_nonnegative_elementwise_and_zero_at_zero():
    grid = torch.cat([torch.linspace(-20, 20, 4001), torch.tensor([0.0, 1e-8, -1e-8, 1e-20, -1e-20])])
    for dtype in (torch.float32, torch.float64):
        values = K.kl_k3(grid.to(dtype))
        assert bool((values >= 0).all())
    assert float(K.kl_k3(torch.tensor(0.0))) == 0.0
    assert float(K.kl_k3(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(math.exp(-1.0))  # e^-1 - 1 + 1


# ---------------------------------------------------------------------------------------------- PLD, reporting


def test_pld_and_per_token_variant():
    assert M.pld([1.0, 2.0, 4.5]) == pytest.approx(2.5)
    assert M.pld_per_token([(10.0, 4), (2.0, 6)]) == pytest.approx(1.2)  # per-example mean would be 1.4167
    with pytest.raises(ValueError):
        M.pld([])
    with pytest.raises(ValueError, match="token"):
        M.pld_per_token([(1.0, 0)])


def test_stderr_and_bootstrap_ci():
    assert M.stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    with pytest.raises(ValueError, match="2 values"):
        M.stderr([1.0])
    assert M.bootstrap_ci([0.7] * 10) == (pytest.approx(0.7), pytest.approx(0.7))
    values = np.random.default_rng(0).normal(3.0, 2.0, size=2000)
    lo, hi = M.bootstrap_ci(values, n_boot=2000, seed=7)
    assert (lo, hi) == M.bootstrap_ci(torch.tensor(values), n_boot=2000, seed=7)  # deterministic, any container
    half_width = 1.96 * M.stderr(values)
    assert lo < values.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half_width, rel=0.15)
    assert M.bootstrap_ci(values, alpha=0.5)[1] - M.bootstrap_ci(values, alpha=0.5)[0] < hi - lo
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci(values, alpha=1.0)
    with pytest.raises(ValueError, match="empty"):
        M.bootstrap_ci([])
