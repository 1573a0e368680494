"""Synthetic skills and target tasks of the toy world.

Every generator maps a ``numpy.random.Generator`` to ``(prompt, reference, answer)``. Prompts are
short keyword commands (``add 47 18``) so that a ~2M-parameter model can learn them in a few CPU
minutes; digits are single tokens (the toy tokenizer splits them).

Retention skills (what θ0 is pretrained on and what SFT may make it forget):
    add      ``add 47 18``          -> ``65``
    reverse  ``reverse q w e r``    -> ``r e w q``
    max      ``max 31 7 85 40``     -> ``85``
    sort     ``sort d a c b``       -> ``a b c d``

Target tasks (what post-training trains on), each with *two valid solution styles*:
    sum      ``sum 23 45 18``   teacher style  ``23+45=68 68+18=86 answer 86``
                                native style   ``add 23 45 is 68 add 68 18 is 86 so 86``
    chain    ``chain 45-12+30`` teacher style  ``45-12=33 33+30=63 answer 63``
                                native style   ``sub 45 12 is 33 add 33 30 is 63 so 63``

References (y*) use the teacher style, as the paper's teacher CoTs differ in style from its
students. θ0 sees a small share of target prompts answered in its own (native) style during
pretraining, which gives it a weak prior on one valid solution mode; both styles verify, since
the verifier only reads the final integer.
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


def gen_add(rng: np.random.Generator) -> Sample:
    a, b = _ints(rng, 2)
    return f"add {a} {b}", str(a + b), str(a + b)


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
    """Three 2-digit numbers with a + b <= 99, so every step of the chain is a 2-digit addition
    (the distribution of the ``add`` skill): the target composes a skill θ0 already has."""
    while True:
        xs = _ints(rng, 3, 10, 89)
        if xs[0] + xs[1] <= 99:
            return xs


def gen_sum(rng: np.random.Generator, style: str = "teacher") -> Sample:
    """A sum is a chain of additions: its two styles are the chain styles with ``+`` only."""
    xs, ops = _sum_parts(rng), ["+", "+"]
    ref = chain_teacher(xs, ops) if style == "teacher" else chain_native(xs, ops)
    return "sum " + " ".join(map(str, xs)), ref, str(sum(xs))


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
    return f"sub {a} {b}", str(a - b), str(a - b)


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
