r"""Evaluation metrics: pure functions over numbers, lists, numpy arrays and torch tensors.

Paper references (TMS paper): forgetting score §3.3 eq. 3.2; Pass@K, SC-Acc, answer entropy §4.2 and
App. F.3; held-out PLD §4.3 eq. 4.2; cross-task transfer §7.1; KL-to-base App. F.5.

Conventions shared by every function below:

- A verifier score counts as *correct* when it is ``>= CORRECT_THRESHOLD`` (0.5); booleans act as 0/1,
  so binary and graded verifiers (e.g. an LLM judge in [0, 1]) go through the same code.
- Extracted answers are compared by exact string equality, so normalise them first (e.g. the canonical
  form from ``math-verify``). ``None`` means "no extractable answer".
- Benchmark scores are used in the unit they come in (fraction or percent); F and S_xfer are in that unit.
- Invalid input raises ``ValueError`` with a message naming the offending argument or benchmark.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal, Union

import numpy as np
import torch

from tms.objectives.kl import kl_estimator

CORRECT_THRESHOLD = 0.5
Score = Union[bool, float]
LogProbs = Union[torch.Tensor, np.ndarray, Sequence[Union[torch.Tensor, np.ndarray, Sequence[float]]]]
Estimator = Literal["k1", "k2", "k3"]


def _is_correct(score: Score) -> bool:
    return float(score) >= CORRECT_THRESHOLD


def _mean(values: Sequence[float], what: str) -> float:
    if len(values) == 0:
        raise ValueError(f"{what} is empty")
    return math.fsum(values) / len(values)


# --------------------------------------------------------------------------------------------------------
# Coverage and diversity over K samples per prompt (§4.2)
# --------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    r"""Unbiased pass@k estimator (Chen et al., 2021) from ``n`` samples of which ``c`` are correct.

    .. math::  \text{pass@}k = 1 - \binom{n-c}{k} \Big/ \binom{n}{k}
               = 1 - \prod_{i=n-c+1}^{n} \Bigl(1 - \frac{k}{i}\Bigr)

    computed in the product form (no huge binomials). It is exactly 1 when ``n - c < k``: every
    k-subset then holds a correct sample. Requires ``1 <= k <= n`` and ``0 <= c <= n``.
    """
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1, got n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must satisfy 1 <= k <= n={n}, got k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must satisfy 0 <= c <= n={n}, got c={c}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(correct: Sequence[Sequence[Score]], ks: Sequence[int]) -> dict[int, float]:
    r"""Pass@k averaged over prompts: :math:`\frac{1}{P}\sum_{j=1}^{P} \text{pass@}k(n_j, c_j, k)` for each k.

    ``correct[j]`` holds the verifier scores of prompt j's samples; prompts may have different
    :math:`n_j`. A sample counts as correct when its score is ``>= 0.5`` (``CORRECT_THRESHOLD``), so
    :math:`c_j = |\{s \in \text{correct}[j] : s \ge 0.5\}|`. A k larger than some prompt's :math:`n_j` raises.
    """
    if len(correct) == 0:
        raise ValueError("mean_pass_at_k: correct is empty (no prompts)")
    counts = [(len(scores), sum(_is_correct(s) for s in scores)) for scores in correct]
    out: dict[int, float] = {}
    for k in ks:
        for j, (n, _) in enumerate(counts):
            if not 1 <= k <= n:
                raise ValueError(f"mean_pass_at_k: k={k} is not in [1, n] for prompt {j}, which has n={n} samples")
        out[k] = _mean([pass_at_k(n, c, k) for n, c in counts], "correct")
    return out


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """Most frequent extracted answer among one prompt's samples (self-consistency vote).

    Rules: ``None`` (no extractable answer) never wins; the vote is over the non-None answers and
    returns ``None`` only when every sample is ``None`` (or there are no samples). Ties are broken by the
    answer that appears first among the samples, so the result is deterministic.
    """
    counts = Counter(a for a in answers if a is not None)  # insertion order = first appearance
    if not counts:
        return None
    return max(counts, key=counts.__getitem__)  # max keeps the first of equal counts


def sc_accuracy(
    answers_per_prompt: Sequence[Sequence[str | None]], correct_per_prompt: Sequence[Sequence[Score]]
) -> float:
    r"""Self-consistency accuracy: :math:`\frac{1}{P}\sum_j \mathbb{1}[\hat a_j \text{ is correct}]`.

    :math:`\hat a_j` = ``majority_vote(answers_per_prompt[j])``. It is correct if *any* sample of prompt
    j with that answer has verifier score ``>= 0.5`` (the verifier may look at more than the extracted
    string). A prompt whose samples are all ``None`` counts as wrong.
    """
    if len(answers_per_prompt) != len(correct_per_prompt):
        raise ValueError(
            f"sc_accuracy: answers_per_prompt has {len(answers_per_prompt)} prompts, "
            f"correct_per_prompt has {len(correct_per_prompt)}"
        )
    hits = []
    for j, (answers, scores) in enumerate(zip(answers_per_prompt, correct_per_prompt)):
        if len(answers) != len(scores):
            raise ValueError(f"sc_accuracy: prompt {j} has {len(answers)} answers but {len(scores)} scores")
        winner = majority_vote(answers)
        hits.append(
            float(winner is not None and any(a == winner and _is_correct(s) for a, s in zip(answers, scores)))
        )
    return _mean(hits, "sc_accuracy: answers_per_prompt")


def answer_entropy(answers: Sequence[str | None]) -> float:
    r"""Shannon entropy (nats) of one prompt's empirical answer distribution (AnsEnt, §4.2).

    .. math::  H = -\sum_a \hat p(a) \ln \hat p(a), \qquad \hat p(a) = \frac{|\{i : a_i = a\}|}{K}

    ``None`` ("no answer") is its own category, so K samples without an answer give 0 and failures to
    answer raise entropy like any other distinct answer would. Ranges over :math:`[0, \ln K]`.
    """
    if len(answers) == 0:
        raise ValueError("answer_entropy: answers is empty")
    k = len(answers)
    return sum(-(m / k) * math.log(m / k) for m in Counter(answers).values())  # sum starts at 0: no -0.0


def mean_answer_entropy(answers_per_prompt: Sequence[Sequence[str | None]]) -> float:
    r""":math:`\frac{1}{P}\sum_j H_j` with :math:`H_j` = ``answer_entropy(answers_per_prompt[j])``."""
    return _mean([answer_entropy(a) for a in answers_per_prompt], "mean_answer_entropy: answers_per_prompt")


# --------------------------------------------------------------------------------------------------------
# Retention and transfer against the base policy (§3.3, §7.1)
# --------------------------------------------------------------------------------------------------------


def _selected_deltas(
    scores: Mapping[str, float], base_scores: Mapping[str, float], benchmarks: Sequence[str], fn: str
) -> list[float]:
    if len(set(benchmarks)) != len(benchmarks):
        raise ValueError(f"{fn}: a benchmark is listed twice in {list(benchmarks)}")
    for b in benchmarks:
        for name, mapping in (("scores", scores), ("base_scores", base_scores)):
            if b not in mapping:
                raise ValueError(f"{fn}: benchmark {b!r} is missing from {name}")
    return [float(scores[b]) - float(base_scores[b]) for b in benchmarks]


def deltas(scores: Mapping[str, float], base_scores: Mapping[str, float]) -> dict[str, float]:
    r"""Per-benchmark change :math:`\Delta_b = S_b(\pi) - S_b(\pi_{\theta_0})`.

    Both mappings must hold the same benchmarks.
    """
    names = list(base_scores) + [b for b in scores if b not in base_scores]
    return dict(zip(names, _selected_deltas(scores, base_scores, names, "deltas")))


def forgetting_score(
    scores: Mapping[str, float], base_scores: Mapping[str, float], benchmarks: Sequence[str] | None = None
) -> float:
    r"""Forgetting score (eq. 3.2): only drops count, gains never offset them.

    .. math::  \mathcal{F}(\pi) = \frac{1}{|\mathcal{T}_{ret}|} \sum_{b \in \mathcal{T}_{ret}}
               \min\bigl(S_b(\pi) - S_b(\pi_{\theta_0}), 0\bigr) \le 0

    :math:`\mathcal{T}_{ret}` is ``benchmarks`` (each must be in both mappings) or, when ``None``, every
    benchmark, in which case the two mappings must hold the same keys.
    """
    if benchmarks is None:
        drops = list(deltas(scores, base_scores).values())
    else:
        drops = _selected_deltas(scores, base_scores, benchmarks, "forgetting_score")
    return _mean([min(d, 0.0) for d in drops], "forgetting_score: the retention suite")


def cross_task_transfer(
    scores: Mapping[str, float], base_scores: Mapping[str, float], other_tasks: Sequence[str]
) -> float | None:
    r"""Cross-task transfer (§7.1), signed: gains and drops both count.

    .. math::  S_{xfer} = \frac{1}{|\mathcal{T}_{other}|} \sum_{b \in \mathcal{T}_{other}}
               \bigl(S_b(\pi) - S_b(\pi_{\theta_0})\bigr)

    with :math:`\mathcal{T}_{other} = \mathcal{T}_{tgt} \setminus \{\mathcal{T}_{train}\}` given as
    ``other_tasks``. Returns ``None`` when there are no other target tasks.
    """
    if len(other_tasks) == 0:
        return None
    return _mean(_selected_deltas(scores, base_scores, other_tasks, "cross_task_transfer"), "other_tasks")


# --------------------------------------------------------------------------------------------------------
# KL to the base policy from per-token log-probabilities (App. F.5)
# --------------------------------------------------------------------------------------------------------


def _f64(x: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _log_ratio(
    logp_policy: LogProbs, logp_base: LogProbs, mask: torch.Tensor | np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log π_θ − log π_0`` as a float64 ``[N, L]`` tensor that is 0 off the mask, and the bool mask."""
    if isinstance(logp_policy, (torch.Tensor, np.ndarray)):
        lp, lb = _f64(logp_policy), _f64(logp_base)
        if lp.ndim != 2 or lp.shape != lb.shape:
            raise ValueError(
                f"padded logp_policy/logp_base must both be [N, L], got {tuple(lp.shape)} and {tuple(lb.shape)}"
            )
        m = torch.ones(lp.shape, dtype=torch.bool) if mask is None else _f64(mask).bool()
        if m.shape != lp.shape:
            raise ValueError(f"mask has shape {tuple(m.shape)}, logp_policy has {tuple(lp.shape)}")
    else:
        if mask is not None:
            raise ValueError("mask is only for padded [N, L] tensors; ragged inputs carry their own lengths")
        if len(logp_policy) != len(logp_base):
            raise ValueError(f"logp_policy has {len(logp_policy)} samples, logp_base has {len(logp_base)}")
        rows = [(_f64(p), _f64(b)) for p, b in zip(logp_policy, logp_base)]
        for j, (p, b) in enumerate(rows):
            if p.ndim != 1 or p.shape != b.shape:
                raise ValueError(
                    f"sample {j}: logp_policy {tuple(p.shape)} and logp_base {tuple(b.shape)} differ or are not 1-D"
                )
        length = max((p.numel() for p, _ in rows), default=0)
        lp = torch.zeros(len(rows), length, dtype=torch.float64)
        lb = torch.zeros(len(rows), length, dtype=torch.float64)
        m = torch.zeros(len(rows), length, dtype=torch.bool)
        for j, (p, b) in enumerate(rows):
            lp[j, : p.numel()], lb[j, : p.numel()], m[j, : p.numel()] = p, b, True
    return torch.where(m, lp - lb, 0.0), m  # where, not multiply: padding may hold -inf or nan


def sequence_kl(
    logp_policy: LogProbs,
    logp_base: LogProbs,
    mask: torch.Tensor | np.ndarray | None = None,
    estimator: Estimator = "k1",
) -> torch.Tensor:
    r"""Per-sample Monte-Carlo estimate of the sequence-level KL(π_θ(·|x) ‖ π_0(·|x)).

    .. math::  \widehat{\mathrm{KL}}(y) = \sum_{i} \bigl(\log \pi_\theta(y_i \mid x, y_{<i})
               - \log \pi_0(y_i \mid x, y_{<i})\bigr)

    (the default k1 estimator), unbiased when :math:`y \sim \pi_\theta` — ``logp_policy`` must be the
    log-probs of the distribution the samples were drawn from (after temperature / top-p). With
    ``estimator="k3"`` the summand is :func:`kl_k3` of the token log-ratio instead (also unbiased).

    Inputs are either lists of 1-D arrays/tensors (one per sample, ragged), or padded ``[N, L]``
    tensors with an optional ``mask`` (true on completion tokens; padding values are ignored).
    Returns a float64 CPU tensor ``[N]``.
    """
    log_ratio, _ = _log_ratio(logp_policy, logp_base, mask)
    return kl_estimator(estimator)(log_ratio).sum(dim=1)  # every estimator is 0 at log_ratio = 0 (padding)


def kl_to_base(
    logp_policy: LogProbs,
    logp_base: LogProbs,
    mask: torch.Tensor | np.ndarray | None = None,
    prompt_ids: Sequence[Hashable] | None = None,
    estimator: Estimator = "k1",
) -> dict[str, float]:
    r"""KL-to-base summaries over N samples (inputs as in :func:`sequence_kl`).

    With :math:`\widehat{\mathrm{KL}}_s` the sequence estimate of sample s and :math:`T_s` its token count:

    - ``kl_seq``   :math:`= \frac{1}{N}\sum_s \widehat{\mathrm{KL}}_s` (mean over samples);
    - ``kl_token`` :math:`= \sum_s \widehat{\mathrm{KL}}_s \big/ \sum_s T_s` (per-token KL rate);
    - ``kl_seq_per_prompt`` (only when ``prompt_ids`` is given, one id per sample)
      :math:`= \frac{1}{P}\sum_{x} \frac{1}{|S_x|}\sum_{s \in S_x} \widehat{\mathrm{KL}}_s`: average the samples
      of each prompt first, so every prompt weighs the same however many samples it has — the
      expectation over evaluation prompts of App. F.5.
    """
    log_ratio, m = _log_ratio(logp_policy, logp_base, mask)
    per_token = kl_estimator(estimator)(log_ratio)
    per_sample = per_token.sum(dim=1)
    n_tokens = int(m.sum())
    if per_sample.numel() == 0 or n_tokens == 0:
        raise ValueError(f"kl_to_base: need at least one token, got {per_sample.numel()} samples and {n_tokens} tokens")
    out = {"kl_seq": per_sample.mean().item(), "kl_token": per_token.sum().item() / n_tokens}
    if prompt_ids is not None:
        if len(prompt_ids) != per_sample.numel():
            raise ValueError(f"kl_to_base: prompt_ids has {len(prompt_ids)} entries for {per_sample.numel()} samples")
        groups: dict[Hashable, list[float]] = defaultdict(list)
        for pid, value in zip(prompt_ids, per_sample.tolist()):
            groups[pid].append(value)
        out["kl_seq_per_prompt"] = _mean([_mean(v, "group") for v in groups.values()], "prompt_ids")
    return out


# --------------------------------------------------------------------------------------------------------
# Held-out PLD (§4.3) and reporting helpers
# --------------------------------------------------------------------------------------------------------


def pld(nll_per_example: Sequence[float]) -> float:
    r"""Held-out PLD proxy (eq. 4.2), the mean validation NLL of the reference solutions.

    .. math::  \widehat{\mathrm{PLD}}_{val} = -\frac{1}{|\mathcal{D}_{val}|}
               \sum_{(x, y^*) \in \mathcal{D}_{val}} \log \pi_\theta(y^* \mid x)

    ``nll_per_example`` holds the *sequence* NLL (summed over the reference's tokens) of each example.
    """
    return _mean([float(v) for v in nll_per_example], "pld: nll_per_example")


def pld_per_token(nll_and_tokens: Sequence[tuple[float, int]]) -> float:
    r"""Token-normalised held-out PLD from ``(sum_nll, n_tokens)`` pairs: :math:`\sum_j \mathrm{NLL}_j / \sum_j T_j`.

    Unlike :func:`pld`, long references weigh in proportion to their length; this is the validation
    loss a token-mean trainer logs.
    """
    total_tokens = sum(int(t) for _, t in nll_and_tokens)
    if total_tokens <= 0:
        raise ValueError(f"pld_per_token: nll_and_tokens must hold at least one token, got {total_tokens}")
    return math.fsum(float(s) for s, _ in nll_and_tokens) / total_tokens


def _as_1d(values: Sequence[float] | np.ndarray | torch.Tensor, fn: str) -> np.ndarray:
    x = _f64(values).numpy().reshape(-1)
    if x.size == 0:
        raise ValueError(f"{fn}: values is empty")
    return x


_BOOT_CHUNK = 1 << 22  # resampled indices held in memory at once


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | torch.Tensor, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    r"""Percentile-bootstrap :math:`(1-\alpha)` confidence interval of the mean.

    Draw ``n_boot`` resamples of the n values with replacement, take each resample's mean
    :math:`\bar x^*_b`, and return the :math:`\alpha/2` and :math:`1-\alpha/2` quantiles of
    :math:`\{\bar x^*_b\}`. Deterministic for a given ``seed``.
    """
    x = _as_1d(values, "bootstrap_ci")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got n_boot={n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got alpha={alpha}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    rows = max(1, _BOOT_CHUNK // x.size)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def stderr(values: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    r"""Standard error of the mean, :math:`s / \sqrt{n}`, with :math:`s` the sample standard deviation (ddof = 1).

    Needs n >= 2.
    """
    x = _as_1d(values, "stderr")
    if x.size < 2:
        raise ValueError(f"stderr: needs at least 2 values, got {x.size}")
    return float(x.std(ddof=1) / math.sqrt(x.size))
