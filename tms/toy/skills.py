"""Synthetic skills and target tasks of the toy world (v2).

Every generator maps a ``numpy.random.Generator`` to ``(prompt, reference, answer)``. Prompts are
short keyword commands (``add 47 18``) so that a ~1M-parameter model can learn them in a few CPU
minutes; digits are single tokens (the toy tokenizer splits them).

Retention skills (what θ0 is pretrained on and what SFT may make it forget):
    add      ``add 47 18``          -> ``add 47 18 is 65``   (θ0 shows the step it takes: see below)
    reverse  ``reverse q w e r``    -> ``r e w q``
    max      ``max 31 7 85 40``     -> ``85``
    sort     ``sort d a c b``       -> ``a b c d``

Target tasks (what post-training trains on), each with several valid solution formats:
    sum      ``sum 23 45 18``   native   ``add 23 45 is 68 add 68 18 is 86 so 86``         (θ0's own style)
                                teacher  ``add 45 18 is 63 then add 23 63 is 86 answer 86`` (the references)
                                direct   ``86``
    chain    ``chain 45-12+30`` teacher  ``45-12=33 33+30=63 answer 63``
                                native   ``sub 45 12 is 33 add 33 30 is 63 so 63``

Every step of either sum format is one call of θ0's add skill written exactly as the skill writes it
(``add a b is c``), so the teacher's format needs no skill θ0 lacks: it differs from θ0's native one
in the order of the steps (last two numbers first) and in the words between them (``then``,
``answer`` instead of ``so``). In the v1 world the teacher wrote ``a+b=c``, a notation θ0 never
practised, and SFT had to relearn arithmetic (SFT reached 0.46 target while destroying the add
skill). θ0 sees a share of target prompts answered in its native format during pretraining
(``model.build.native``), a prior on one valid solution mode; every format verifies, since the
verifier reads only the final integer. :func:`solution_format` names the format of a completion
(the buffer diagnostics count them). ``chain`` (S_xfer) needs ``sub``, which θ0 is not taught.
"""
from __future__ import annotations

import re
import string
from typing import Callable

import numpy as np

LETTERS = string.ascii_lowercase
Sample = tuple[str, str, str]


def _ints(rng: np.random.Generator, n: int, lo: int = 0, hi: int = 99) -> list[int]:
    return [int(v) for v in rng.integers(lo, hi + 1, size=n)]


def add_step(a: int, b: int) -> str:
    """One addition in θ0's own words, ``add 47 18 is 65``: the add skill's answer and every step of a
    chain (native or teacher), so a chain composes exactly the pattern θ0 practised, wherever it stands."""
    return f"add {a} {b} is {a + b}"


def gen_add(rng: np.random.Generator) -> Sample:
    a, b = _ints(rng, 2)
    return f"add {a} {b}", add_step(a, b), str(a + b)


def gen_reverse(rng: np.random.Generator) -> Sample:
    k = int(rng.integers(3, 7))
    letters = [LETTERS[i] for i in rng.integers(0, 26, size=k)]
    out = " ".join(reversed(letters))
    return "reverse " + " ".join(letters), out, out


def gen_max(rng: np.random.Generator) -> Sample:
    k = int(rng.integers(3, 6))
    xs = _ints(rng, k)
    return "max " + " ".join(map(str, xs)), str(max(xs)), str(max(xs))


def gen_sort(rng: np.random.Generator) -> Sample:
    k = int(rng.integers(3, 6))
    letters = [LETTERS[i] for i in rng.integers(0, 26, size=k)]
    out = " ".join(sorted(letters))
    return "sort " + " ".join(letters), out, out


def _sum_parts(rng: np.random.Generator) -> list[int]:
    """Three 2-digit numbers with a + b <= 99 and b + c <= 99, so every step of either solution order is
    an addition of two numbers below 100 (the distribution of the ``add`` skill): the target composes a
    skill θ0 already has."""
    while True:
        xs = _ints(rng, 3, 10, 89)
        if xs[0] + xs[1] <= 99 and xs[1] + xs[2] <= 99:
            return xs


def sum_native(xs: list[int]) -> str:
    """θ0's own style: left to right, ``add a b is s add s c is t so t``."""
    a, b, c = xs
    return f"{add_step(a, b)} {add_step(a + b, c)} so {a + b + c}"


def sum_teacher(xs: list[int]) -> str:
    """The teacher's style: the last two numbers first, other connectives,
    ``add b c is s then add a s is t answer t``. It calls only θ0's add skill, in another order and words."""
    a, b, c = xs
    return f"{add_step(b, c)} then {add_step(a, b + c)} answer {a + b + c}"


def gen_sum(rng: np.random.Generator, style: str = "teacher") -> Sample:
    xs = _sum_parts(rng)
    ref = sum_teacher(xs) if style == "teacher" else sum_native(xs)
    return "sum " + " ".join(map(str, xs)), ref, str(sum(xs))


_N = r"\d+"
#: the valid solution formats of the sum target (the verifier accepts all; it reads the last integer)
SUM_FORMATS = {
    "native": re.compile(rf"add {_N} {_N} is {_N} add {_N} {_N} is {_N} so {_N}"),
    "teacher": re.compile(rf"add {_N} {_N} is {_N} then add {_N} {_N} is {_N} answer {_N}"),
    "direct": re.compile(_N),
}


def solution_format(completion: str) -> str:
    """Which solution format a sum completion is written in: ``native`` | ``teacher`` | ``direct`` | ``other``
    (the surface form only; correctness is the verifier's)."""
    text = " ".join(completion.split())
    return next((name for name, rx in SUM_FORMATS.items() if rx.fullmatch(text)), "other")


def _chain_parts(rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """Three 2-digit numbers and two operators; every intermediate value stays in [0, 99]."""
    while True:
        xs = _ints(rng, 3, 10, 89)
        ops = ["+" if o else "-" for o in rng.integers(0, 2, size=2)]
        vals = chain_value(xs, ops)
        if all(0 <= v <= 99 for v in vals[:-1]) and vals[-1] >= 0:
            return xs, ops


def chain_value(xs: list[int], ops: list[str]) -> list[int]:
    vals, acc = [], xs[0]
    for op, x in zip(ops, xs[1:]):
        acc = acc + x if op == "+" else acc - x
        vals.append(acc)
    return vals


def chain_steps(xs: list[int], ops: list[str]) -> list[tuple[int, str, int, int]]:
    """The chain's steps ``(running value, op, operand, new value)``, in order."""
    vals = chain_value(xs, ops)
    return list(zip([xs[0], *vals[:-1]], ops, xs[1:], vals))


def chain_teacher(xs: list[int], ops: list[str]) -> str:
    steps = chain_steps(xs, ops)
    return " ".join(f"{prev}{op}{x}={v}" for prev, op, x, v in steps) + f" answer {steps[-1][3]}"


def chain_native(xs: list[int], ops: list[str]) -> str:
    steps = chain_steps(xs, ops)
    return " ".join(f"{'add' if op == '+' else 'sub'} {prev} {x} is {v}" for prev, op, x, v in steps) + f" so {steps[-1][3]}"


def gen_chain(rng: np.random.Generator, style: str = "teacher") -> Sample:
    xs, ops = _chain_parts(rng)
    expr = str(xs[0]) + "".join(f"{o}{x}" for o, x in zip(ops, xs[1:]))
    ref = chain_teacher(xs, ops) if style == "teacher" else chain_native(xs, ops)
    return f"chain {expr}", ref, str(chain_value(xs, ops)[-1])


def gen_sub(rng: np.random.Generator) -> Sample:
    a, b = sorted(_ints(rng, 2), reverse=True)
    return f"sub {a} {b}", f"sub {a} {b} is {a - b}", str(a - b)


GENERATORS: dict[str, Callable[..., Sample]] = {
    "add": gen_add,
    "sub": gen_sub,
    "reverse": gen_reverse,
    "max": gen_max,
    "sort": gen_sort,
    "sum": gen_sum,
    "chain": gen_chain,
}
#: skills whose answer is a single integer: graded on the last integer of the completion
NUMERIC = {"add", "sub", "max", "sum", "chain"}
#: tasks with a chain-of-thought reference in two styles
STYLED = {"sum", "chain"}

_LAST_INT = re.compile(r"-?\d+")


def last_integer(text: str) -> str | None:
    found = _LAST_INT.findall(text)
    return found[-1] if found else None


def extract(skill: str, completion: str) -> str | None:
    """The final answer: the last integer for numeric skills, the normalised text otherwise."""
    if skill in NUMERIC:
        return last_integer(completion)
    text = " ".join(completion.split())
    return text or None
