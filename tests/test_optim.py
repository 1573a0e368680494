"""``tms.training.optim.cosine_with_warmup`` against its formula, stepped through a real optimiser."""
import math
from fractions import Fraction

import pytest
import torch

from tms.training.optim import cosine_with_warmup


def expected_factor(s: int, n: int, warmup_ratio: float, floor: float) -> float:
    """The docstring's schedule, written out: W = ceil(r N) warmup steps (exact arithmetic on r as written),
    lr multiplier (s + 1) / W during warmup, then floor + (1 - floor) (1 + cos(pi (s - W) / max(1, N - W))) / 2,
    held at the floor once the decay is over."""
    w = math.ceil(Fraction(str(warmup_ratio)) * n)
    if s < w:
        return (s + 1) / w
    done = min(Fraction(s - w, max(1, n - w)), Fraction(1))
    return floor + (1 - floor) * (1 + math.cos(math.pi * float(done))) / 2


def lrs_seen(n: int, warmup_ratio: float, floor: float, base=(0.1, 0.02), steps: int | None = None, **kw):
    """Learning rates of two parameter groups at each optimiser step 0..steps-1 of a real SGD run."""
    w = torch.nn.Parameter(torch.ones(3))
    v = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [w], "lr": base[0]}, {"params": [v], "lr": base[1]}], lr=base[0])
    sched = cosine_with_warmup(opt, total_steps=n, warmup_ratio=warmup_ratio, min_lr_ratio=floor, **kw)
    seen = []
    for _ in range(n + 2 if steps is None else steps):
        seen.append([g["lr"] for g in opt.param_groups])
        (w.sum() + v.sum()).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return seen


@pytest.mark.parametrize("n,warmup_ratio,floor", [
    (1, 0.0, 0.0), (1, 0.5, 0.0), (2, 0.0, 0.1), (10, 0.0, 0.0), (10, 0.3, 0.0), (10, 0.25, 0.1),
    (37, 0.05, 0.2), (100, 0.03, 0.0), (64, 0.5, 0.05),
])
def test_schedule_follows_its_formula(n, warmup_ratio, floor):
    base = (0.1, 0.02)
    for s, lrs in enumerate(lrs_seen(n, warmup_ratio, floor, base)):
        want = expected_factor(s, n, warmup_ratio, floor)
        assert lrs == pytest.approx([b * want for b in base], rel=1e-12, abs=1e-15), (s, lrs)


def test_hand_computed_values():
    # N = 4, r = 0.25: W = 1; then the cosine over N - W = 3 steps: 1, 1/2 (1 + cos(pi/3)) = 3/4, 1/4, 0
    assert [lr for lr, _ in lrs_seen(4, 0.25, 0.0, steps=6)] == pytest.approx([0.1, 0.1, 0.075, 0.025, 0.0, 0.0])
    # a floor of 0.1 lifts the decay: 0.1 + 0.9 x (1, 1, 3/4, 1/4, 0)
    assert [lr for lr, _ in lrs_seen(4, 0.25, 0.1, steps=5)] == pytest.approx([0.1, 0.1, 0.0775, 0.0325, 0.01])
    # N = 10, r = 0.3: W = 3 linear steps 1/3, 2/3, 1, then the peak at step W
    assert [lr for lr, _ in lrs_seen(10, 0.3, 0.0, steps=4)] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])
    # N = 1: no warmup means the peak lr for the only step; r = 0.5 gives W = ceil(0.5) = 1, the same
    assert lrs_seen(1, 0.0, 0.0, steps=1) == lrs_seen(1, 0.5, 0.0, steps=1) == [[0.1, 0.02]]


def test_shape_warmup_rises_to_the_peak_and_decay_ends_at_the_floor():
    n, floor = 200, 0.1
    lrs = [lr for lr, _ in lrs_seen(n, 0.05, floor)]
    w = 10  # ceil(0.05 * 200)
    assert all(a < b for a, b in zip(lrs[:w], lrs[1:w]))  # strictly rising warmup
    assert lrs[0] == pytest.approx(0.1 / w) and lrs[w - 1] == pytest.approx(0.1) and lrs[w] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[w:], lrs[w + 1:]))  # non-increasing decay
    assert lrs[w + (n - w) // 2] == pytest.approx(0.1 * (1 + floor) / 2)  # half-way down the cosine
    assert lrs[n] == pytest.approx(0.1 * floor) and lrs[n + 1] == pytest.approx(0.1 * floor)  # held at the floor


def test_explicit_warmup_steps_override_the_ratio():
    lrs = [lr for lr, _ in lrs_seen(10, 0.5, 0.0, steps=4, warmup_steps=2)]
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * (1 + math.cos(math.pi / 8)) / 2])


def test_warmup_length_is_the_exact_ceiling():
    """0.07 * 100 is 7.000000000000001 in floats: W must still be ceil(r N) = 7, not 8."""
    lrs = [lr for lr, _ in lrs_seen(100, 0.07, 0.0, steps=7)]
    assert lrs[6] == pytest.approx(0.1)  # step W - 1 = 6 reaches the peak


def test_invalid_arguments_are_refused():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_with_warmup(opt, total_steps=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        cosine_with_warmup(opt, total_steps=10, warmup_ratio=1.0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        cosine_with_warmup(opt, total_steps=10, warmup_ratio=-0.1)
