r"""Reward functions for the RL baselines (GRPO, REINFORCE), plugged in as Hydra ``_target_``\ s.

Every reward function has one signature::

    reward(completions: Sequence[str], examples: Sequence[Example], task: Task) -> list[float]

with ``examples[i]`` the example ``completions[i]`` answers (so a group of G samples of one prompt
repeats its example G times) and ``task`` the training task, whose verifier
(:meth:`~tms.data.tasks.base.Task.verify`: math-verify for math, the Countdown checker, exact match
for the toy tasks) and answer extractor (:meth:`~tms.data.tasks.base.Task.extract_answer`) do the
grading. The paper's RL baselines use the binary outcome reward :math:`r(x, y) \in \{0, 1\}`
(:class:`VerifierReward`, appendix F.2). A user reward is any object with this call signature::

    rl:
      reward:
        _target_: my_package.MyReward
"""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence

from tms.data.tasks.base import Example, Task


class RewardFunction(Protocol):
    """What :class:`tms.methods.rl.RLModule` calls once per rollout."""

    def __call__(self, completions: Sequence[str], examples: Sequence[Example], task: Task) -> list[float]:
        ...


def _check_lengths(completions: Sequence[str], examples: Sequence[Example]) -> None:
    if len(completions) != len(examples):
        raise ValueError(f"reward: {len(completions)} completions but {len(examples)} examples")


class VerifierReward:
    r"""Outcome reward from the task's verifier.

    .. math::  r(x, y) = \mathbb{1}\big[\operatorname{verify}(y, a^*_x) \ge \tau\big]
               \quad (\text{binary}), \qquad r(x, y) = \operatorname{verify}(y, a^*_x) \quad (\text{not binary})

    Verifiers return scores in [0, 1] (all built-in ones return exactly 0.0 or 1.0), so the default
    threshold :math:`\tau = 1` rewards only fully correct answers; a lower threshold turns a graded
    verifier (e.g. a judge's score) into a pass/fail reward. ``binary=False`` passes the raw score through.
    """

    def __init__(self, threshold: float = 1.0, binary: bool = True) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"VerifierReward threshold must be in [0, 1], got {threshold}")
        self.threshold, self.binary = float(threshold), bool(binary)

    def __call__(self, completions: Sequence[str], examples: Sequence[Example], task: Task) -> list[float]:
        _check_lengths(completions, examples)
        scores = task.score(list(completions), [e.answer for e in examples])
        if not self.binary:
            return [float(s) for s in scores]
        return [1.0 if s >= self.threshold else 0.0 for s in scores]


class FormatReward:
    r"""Format reward: :math:`r(x, y) = \mathbb{1}[\operatorname{extract\_answer}(y) \ne \text{None}]`.

    1.0 when the task can extract a final answer from the completion (a ``\boxed{}`` or
    ``<answer>`` tag for the math tasks and Countdown, the last integer for numeric toy tasks),
    whether or not it is correct; 0.0 otherwise. Meant as a small additive term next to
    :class:`VerifierReward` in a :class:`CombinedReward`.
    """

    def __call__(self, completions: Sequence[str], examples: Sequence[Example], task: Task) -> list[float]:
        _check_lengths(completions, examples)
        return [0.0 if task.extract_answer(c) is None else 1.0 for c in completions]


class CombinedReward:
    r"""Weighted sum of reward terms: :math:`r = \sum_k w_k \, r_k`.

    Args:
        terms: name → reward function (Hydra instantiates nested ``_target_``\ s).
        weights: name → weight; a term without one weighs 1.0.

    Example (binary correctness plus a 0.1 format bonus)::

        reward:
          _target_: tms.methods.rewards.CombinedReward
          terms:
            correct: {_target_: tms.methods.rewards.VerifierReward}
            format: {_target_: tms.methods.rewards.FormatReward}
          weights: {format: 0.1}
    """

    def __init__(self, terms: Mapping[str, RewardFunction], weights: Mapping[str, float] | None = None) -> None:
        if not terms:
            raise ValueError("CombinedReward needs at least one term")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"CombinedReward weights {unknown} name no term; terms are {sorted(terms)}")
        self.terms = dict(terms)
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.terms}

    def __call__(self, completions: Sequence[str], examples: Sequence[Example], task: Task) -> list[float]:
        _check_lengths(completions, examples)
        total = [0.0] * len(completions)
        for name, term in self.terms.items():
            values = term(completions, examples, task)
            if len(values) != len(completions):
                raise ValueError(f"reward term {name!r} returned {len(values)} values for {len(completions)} completions")
            w = self.weights[name]
            total = [t + w * float(v) for t, v in zip(total, values)]
        return total
