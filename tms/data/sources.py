r"""Target sources: where the supervision target ỹ of each training example comes from.

A source is bound to the training examples (and, for sources that read the trajectory buffer,
to the buffer) and then *draws* one target per example per epoch, reproducibly from
``(seed, epoch)``::

    reference            ỹ = y*                                   (SFT)
    trajectory_mixture   ỹ = y* w.p. α, else H[t, x] with t ~ p(t)  (TMS, eq. 5.2 / Algorithm 1)
    self                 ỹ = H[0, x]   (samples of θ0;  α = 0)    (Self-SFT)
    final                ỹ = H[T, x]   (samples of the last SFT checkpoint; α = 0)  (Final-SFT)

``self`` and ``final`` are the mixture with α = 0 and a single checkpoint, so one class serves all
buffer-based sources. Checkpoint indices are 1..T for SFT checkpoints and 0 for θ0.

p(t) over the selected checkpoints t_1 < ... < t_m (m = T unless a subset is given):
    uniform  p = 1/m
    early    uniform over the first ⌈m/3⌉           (paper RQ9: t ≤ ⌈T/3⌉)
    late     uniform over positions i ≥ ⌈2m/3⌉     (paper RQ9: t ≥ ⌈2T/3⌉), i.e. the last m − ⌈2m/3⌉ + 1
    [w_1..w_m] explicit weights (must sum to 1)
"""
from __future__ import annotations

import abc
import math
from collections import Counter
from typing import Sequence

import numpy as np

from tms.data.tasks.base import Example

REFERENCE = "reference"


def checkpoint_label(t: int) -> str:
    return f"t={int(t)}"


def window_weights(p_t: str | Sequence[float], m: int, key: str = "data.target_source.p_t") -> np.ndarray:
    """Probabilities over the m selected checkpoints (positions 1..m) for a p(t) spec."""
    if m < 1:
        raise ValueError(f"{key}: no checkpoint selected")
    pos = np.arange(1, m + 1)
    if isinstance(p_t, str):
        if p_t == "uniform":
            w = np.ones(m)
        elif p_t == "early":
            w = (pos <= math.ceil(m / 3)).astype(float)
        elif p_t == "late":
            w = (pos >= math.ceil(2 * m / 3)).astype(float)
        else:
            raise ValueError(f"{key}={p_t!r}: expected 'uniform', 'early', 'late' or a list of {m} weights")
        return w / w.sum()
    w = np.asarray(list(p_t), dtype=float)
    if w.shape != (m,):
        raise ValueError(f"{key}: {len(w)} weights given for {m} checkpoints; give exactly one weight per checkpoint")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"{key}: weights must be finite and >= 0, got {w.tolist()}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"{key}: weights must sum to 1, they sum to {w.sum():.6g}")
    return w


class TargetSource(abc.ABC):
    """Draws one target text per training example per epoch."""

    name: str = "source"

    def required_checkpoints(self, T: int) -> list[int]:
        """Checkpoint indices the harvest must provide (0 = θ0); empty if the buffer is not used."""
        return []

    @abc.abstractmethod
    def bind(self, examples: Sequence[Example], buffer=None, T: int | None = None) -> None:
        """Attach the training examples (and the trajectory buffer) before drawing."""

    @abc.abstractmethod
    def draw(self, epoch: int, seed: int) -> tuple[list[str], list[str]]:
        """``(texts, labels)`` for every bound example; labels are ``reference`` or ``t=<t>``."""

    @staticmethod
    def counts(labels: Sequence[str]) -> dict[str, int]:
        return dict(sorted(Counter(labels).items()))


class ReferenceSource(TargetSource):
    """ỹ = y*: the dataset's (or teacher's) reference completion."""

    name = "reference"

    def bind(self, examples, buffer=None, T=None) -> None:
        self.examples = list(examples)

    def draw(self, epoch: int, seed: int) -> tuple[list[str], list[str]]:
        return [e.reference for e in self.examples], [REFERENCE] * len(self.examples)


class TrajectoryMixtureSource(TargetSource):
    """ỹ = y* with probability α, otherwise a harvested sample H[t, x] with t ~ p(t).

    Args:
        alpha: probability of the reference target (paper default 0.25).
        p_t: ``uniform`` | ``early`` | ``late`` | list of weights over the selected checkpoints.
        checkpoints: which checkpoints to mix: ``null`` (all of 1..T), a list of indices in 0..T,
            ``final`` (= [T]) or ``base`` (= [0], θ0's own samples).
        correct_only: keep only verifier-correct samples (off in the paper). For an example, p(t)
            is renormalised over the checkpoints that have a correct sample; an example with none
            falls back to y* and is counted as ``reference_fallback``.

        name: label of the source in logs.

    Examples outside a harvested prompt subset (``harvest.prompt_subset``, which the buffer carries
    as ``buffer.prompt_subset``) have no trajectory and always train on y*; they are counted as
    ``reference_unharvested``. Without a prompt subset every example must have samples at every
    selected checkpoint: a buffer that lacks some is an error naming the checkpoint and the count
    (a deleted shard must not silently turn harvested targets into references).
    """

    def __init__(self, alpha: float = 0.25, p_t: str | Sequence[float] = "uniform",
                 checkpoints: str | Sequence[int] | None = None, correct_only: bool = False,
                 name: str = "trajectory_mixture") -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"data.target_source.alpha={alpha} must be in [0, 1]")
        self.alpha, self.p_t, self.spec = float(alpha), p_t, checkpoints
        self.correct_only, self.name = bool(correct_only), name

    def selected(self, T: int) -> list[int]:
        """The checkpoint indices mixed over, validated against T."""
        key = "data.target_source.checkpoints"
        if T is None or int(T) < 1:
            raise ValueError(f"T (sft.num_checkpoints) must be >= 1, got {T}")
        if self.spec is None:
            return list(range(1, int(T) + 1))
        if self.spec == "final":
            return [int(T)]
        if self.spec == "base":
            return [0]
        if isinstance(self.spec, str):
            raise ValueError(f"{key}={self.spec!r}: expected null, 'final', 'base' or a list of indices in 0..{T}")
        ts = [int(t) for t in self.spec]
        bad = [t for t in ts if not 0 <= t <= int(T)]
        if bad or not ts or len(set(ts)) != len(ts):
            raise ValueError(f"{key}={list(self.spec)}: indices must be distinct and in 0..T={T} (0 = θ0); bad: {bad}")
        return sorted(ts)

    def required_checkpoints(self, T: int) -> list[int]:
        ts = self.selected(T)
        window_weights(self.p_t, len(ts))  # validate p(t) against the selection before any compute
        return ts if self.alpha < 1.0 else []

    def bind(self, examples, buffer=None, T=None) -> None:
        self.examples = list(examples)
        self.ts = self.selected(T)
        self.weights = window_weights(self.p_t, len(self.ts))
        if self.alpha < 1.0:
            if buffer is None:
                raise ValueError(f"target source {self.name!r} needs a trajectory buffer (alpha < 1)")
            # samples[i][j] = list of (completion, score) for example i at checkpoint ts[j]; None if unharvested
            if getattr(buffer, "prompt_subset", None) is None:
                self._require_every_example(buffer)
            self.samples = [self._example_samples(buffer, e.id) for e in self.examples]
            if all(s is None for s in self.samples):
                raise ValueError(f"target source {self.name!r}: the trajectory buffer holds none of the training examples")

    def _require_every_example(self, buffer) -> None:
        for t in self.ts:
            missing = [e.id for e in self.examples if not buffer.has(t, e.id)]
            if missing:
                raise ValueError(
                    f"trajectory buffer: checkpoint t={t} has no harvested sample for {len(missing)} of the "
                    f"{len(self.examples)} training examples (e.g. {missing[:3]}); the harvest is incomplete. "
                    "Re-run to regenerate the missing shards, or set harvest.prompt_subset to train on a "
                    "harvested subset and the other examples on references")

    def _example_samples(self, buffer, example_id: str):
        have = [buffer.has(t, example_id) for t in self.ts]
        if not any(have):
            return None
        if not all(have):
            missing = [t for t, h in zip(self.ts, have) if not h]
            raise ValueError(f"trajectory buffer: example {example_id!r} has samples for some checkpoints but not t={missing}")
        return [buffer.samples(t, example_id) for t in self.ts]

    def draw(self, epoch: int, seed: int) -> tuple[list[str], list[str]]:
        n = len(self.examples)
        rng = np.random.default_rng([int(seed), int(epoch), 0x7415])
        use_ref = rng.random(n) < self.alpha
        pick_t = rng.choice(len(self.ts), size=n, p=self.weights)
        pick_u = rng.random(n)  # which of the k samples
        pick_r = rng.random(n)  # correct-only: redraw of t among checkpoints with a correct sample
        texts, labels = [], []
        for i, ex in enumerate(self.examples):
            if use_ref[i] or self.samples[i] is None:
                texts.append(ex.reference)
                labels.append(REFERENCE if use_ref[i] else "reference_unharvested")
                continue
            j = int(pick_t[i])
            if self.correct_only:
                j, pool = self._correct_pool(i, j, pick_r[i])
                if pool is None:
                    texts.append(ex.reference)
                    labels.append("reference_fallback")
                    continue
            else:
                pool = self.samples[i][j]
            texts.append(pool[min(int(pick_u[i] * len(pool)), len(pool) - 1)][0])
            labels.append(checkpoint_label(self.ts[j]))
        return texts, labels

    def _correct_pool(self, i: int, j: int, u: float):
        """Checkpoint position and correct samples for example i; p(t) renormalised if needed."""
        pools = [[s for s in self.samples[i][jj] if s[1] is not None and s[1] >= 0.5] for jj in range(len(self.ts))]
        if pools[j]:
            return j, pools[j]
        w = np.array([self.weights[jj] if pools[jj] else 0.0 for jj in range(len(self.ts))])
        if w.sum() <= 0:
            return j, None
        jj = int(np.searchsorted(np.cumsum(w / w.sum()), u, side="right"))
        jj = min(jj, len(self.ts) - 1)
        return jj, pools[jj]
