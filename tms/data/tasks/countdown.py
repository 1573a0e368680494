"""Countdown (Pan et al. 2025, TinyZero): reach a target with given numbers and + - * /.

Every instance is generated locally and is solvable by construction: draw ``k`` numbers (``k`` from
``num_numbers``) uniformly from ``[1, max_number]`` with replacement, then combine random pairs with
random operators into one expression tree whose intermediate values are all positive integers
(``a - b`` only for ``a > b``, ``a / b`` only when ``b > 1`` divides ``a``). The instance is kept if
the value lies in ``target_range`` and its key ``(sorted numbers, target)`` has not been generated
before; otherwise it is redrawn. The tree is the reference solution.

Each split has its own random stream seeded from ``(seed, split)`` and the splits are generated in
the order test, val, train, each skipping keys already used. Hence the test set depends only on
``seed`` and ``n_test`` (not on ``n_train``), splits are disjoint, and everything is a pure function
of the constructor arguments.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

from tms.data.tasks.base import Example, Task
from tms.data.tasks.loading import apply_teacher_completions
from tms.data.tasks.verify import (
    countdown_verify,
    extract_final_answer,
    normalize_countdown_expression,
)

DEFAULT_PROMPT = (
    "Using the numbers {numbers}, write an arithmetic expression that equals {target}. "
    "Use each number exactly once, and only +, -, *, / and parentheses. "
    "Reason step by step, then give only the final expression (without '= {target}') "
    "inside <answer></answer> tags, for example <answer>(1 + 2) * 3</answer>."
)

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_MAX_DRAWS = 10_000


@dataclasses.dataclass(slots=True)
class _Node:
    """An expression tree node: a leaf number (``op`` is None) or ``left op right``."""

    value: int
    op: str | None = None
    left: "_Node | None" = None
    right: "_Node | None" = None

    def render(self) -> str:
        """Infix string with the parentheses that precedence and left-associativity require."""
        if self.op is None:
            return str(self.value)
        prec = _PRECEDENCE[self.op]
        left, right = self.left.render(), self.right.render()
        if self.left.op is not None and _PRECEDENCE[self.left.op] < prec:
            left = f"({left})"
        if self.right.op is not None and (
            _PRECEDENCE[self.right.op] < prec or (_PRECEDENCE[self.right.op] == prec and self.op in "-/")
        ):
            right = f"({right})"
        return f"{left} {self.op} {right}"

    def steps(self) -> list[str]:
        """The binary operations in evaluation order, as ``"a op b = c"`` strings."""
        if self.op is None:
            return []
        own = f"{self.left.value} {self.op} {self.right.value} = {self.value}"
        return self.left.steps() + self.right.steps() + [own]


def _combine(a: _Node, b: _Node, rng: random.Random) -> _Node:
    """A random node ``a op b`` (operands reordered as needed) whose value is a positive integer."""
    big, small = (a, b) if a.value >= b.value else (b, a)
    choices = [("+", a, b), ("*", a, b)]
    if big.value > small.value:
        choices.append(("-", big, small))
    if small.value > 1 and big.value % small.value == 0:
        choices.append(("/", big, small))
    op, left, right = rng.choice(choices)
    value = {
        "+": left.value + right.value,
        "-": left.value - right.value,
        "*": left.value * right.value,
        "/": left.value // right.value,
    }[op]
    return _Node(value, op, left, right)


def _random_tree(numbers: Sequence[int], rng: random.Random) -> _Node:
    """Combine random pairs of ``numbers`` until one tree over all of them remains."""
    pool = [_Node(n) for n in numbers]
    while len(pool) > 1:
        a = pool.pop(rng.randrange(len(pool)))
        b = pool.pop(rng.randrange(len(pool)))
        pool.append(_combine(a, b, rng))
    return pool[0]


def reference_solution(tree: _Node) -> str:
    """Step-by-step reference completion ending in ``<answer>EXPR</answer>``."""
    steps = tree.steps()
    text = " ".join(f"Step {i}: {s}." for i, s in enumerate(steps, 1))
    return f"{text} This reaches the target {tree.value}.\n<answer>{tree.render()}</answer>"


class CountdownTask(Task):
    """Countdown instances generated from a seed; the gold answer is ``{"numbers", "target"}``.

    Args:
        seed: generator seed; same seed, same examples.
        n_train, n_val, n_test: split sizes.
        num_numbers: how many numbers an instance has, drawn uniformly from this list (or an int).
        max_number: numbers are drawn from ``[1, max_number]``.
        target_range: inclusive ``[low, high]`` range of targets.
        prompt_template: user prompt with ``{numbers}`` and ``{target}`` placeholders.
        teacher_completions: optional jsonl of ``{"id", "completion"}`` replacing train references.
    """

    name = "countdown"

    def __init__(
        self,
        seed: int = 1234,
        n_train: int = 10_000,
        n_val: int = 500,
        n_test: int = 1000,
        num_numbers: int | Sequence[int] = (3, 4),
        max_number: int = 100,
        target_range: Sequence[int] = (1, 100),
        prompt_template: str = DEFAULT_PROMPT,
        teacher_completions: str | None = None,
    ) -> None:
        super().__init__()
        self.seed = int(seed)
        self.sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        self.num_numbers = [int(num_numbers)] if isinstance(num_numbers, int) else [int(k) for k in num_numbers]
        self.max_number = int(max_number)
        low, high = (int(v) for v in target_range)
        self.target_range = (low, high)
        self.prompt_template = prompt_template
        self.teacher_completions = teacher_completions
        if not self.num_numbers or min(self.num_numbers) < 2:
            raise ValueError(f"countdown: num_numbers must be >= 2, got {num_numbers!r}")
        if self.max_number < 1 or low < 1 or high < low:
            raise ValueError(f"countdown: need max_number >= 1 and 1 <= low <= high, got {max_number}, {target_range}")
        if min(self.sizes.values()) < 0:
            raise ValueError(f"countdown: split sizes must be >= 0, got {self.sizes}")
        self._generated: dict[str, list[Example]] | None = None

    # -- generation ---------------------------------------------------------------------------
    def _instance(self, rng: random.Random, used: set) -> tuple[list[int], _Node]:
        """Draw a fresh solvable instance whose key is not in ``used`` (which it is added to).

        The count ``k`` is drawn once, before rejection sampling, so that it stays uniform over
        ``num_numbers`` although larger ``k`` are rejected more often.
        """
        low, high = self.target_range
        k = rng.choice(self.num_numbers)
        for _ in range(_MAX_DRAWS):
            numbers = [rng.randint(1, self.max_number) for _ in range(k)]
            tree = _random_tree(numbers, rng)
            key = (tuple(sorted(numbers)), tree.value)
            if low <= tree.value <= high and key not in used:
                used.add(key)
                return numbers, tree
        raise RuntimeError(
            f"countdown: no new instance in {_MAX_DRAWS} draws; the target range {self.target_range} "
            f"is too narrow or too many examples were requested"
        )

    def _generate(self) -> dict[str, list[Example]]:
        """All three splits, generated in the order test, val, train with a shared set of used keys."""
        used: set = set()
        out: dict[str, list[Example]] = {}
        for split in ("test", "val", "train"):
            rng = random.Random(f"countdown:{self.seed}:{split}")
            rows = []
            for i in range(self.sizes[split]):
                numbers, tree = self._instance(rng, used)
                prompt = self.prompt_template.replace("{numbers}", str(numbers)).replace("{target}", str(tree.value))
                rows.append(
                    Example(
                        id=f"countdown-{split}-{i:06d}",
                        prompt=prompt,
                        reference=reference_solution(tree),
                        answer={"numbers": numbers, "target": tree.value},
                        meta={"num_numbers": len(numbers)},
                    )
                )
            out[split] = rows
        return out

    def load_split(self, split: str) -> list[Example]:
        """The generated examples of ``split``; train references may come from a teacher file."""
        if self._generated is None:
            self._generated = self._generate()
        rows = self._generated[split]
        return apply_teacher_completions(rows, self.teacher_completions) if split == "train" else rows

    # -- grading ------------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The final expression with unicode/LaTeX operators normalised and all whitespace removed
        (``(12 + 5) × 3`` -> ``(12+5)*3``), or None if the completion has no non-empty final answer."""
        answer = extract_final_answer(completion)
        if answer is None:
            return None
        return re.sub(r"\s+", "", normalize_countdown_expression(answer)) or None

    def verify(self, completion: str, answer: dict) -> float:
        """:func:`tms.data.tasks.verify.countdown_verify` against ``answer["numbers"]`` and ``answer["target"]``."""
        try:
            return countdown_verify(completion, answer["numbers"], answer["target"])
        except Exception:  # noqa: BLE001 - malformed gold answer
            return 0.0
