"""Toy-world tasks: the skills of :mod:`tms.toy.skills` behind the :class:`~tms.data.tasks.base.Task` seam."""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from tms.data.tasks.base import Example, Task
from tms.toy.skills import GENERATORS, STYLED, extract, solution_format


class ToyTask(Task):
    """One toy skill or target task with disjoint, seeded train/val/test splits.

    Splits are drawn from one stream of unique prompts (test first, then val, then train), so no
    prompt appears in two splits and the test set does not change when ``n_train`` changes.
    ``style`` picks the reference style of the target tasks (``teacher`` or ``native``);
    ``direct_share`` (native style only) answers that fraction of the train examples with the bare
    answer (the ``direct`` format) instead, drawn per example from the task's seed: θ0's native prior
    then holds two modes, a reliable chain and a shortcut it cannot compute.
    The score is exact match of the final answer: the last integer for numeric skills, the
    whitespace-normalised text otherwise.
    """

    def __init__(
        self,
        skill: str,
        n_train: int = 2000,
        n_val: int = 200,
        n_test: int = 200,
        seed: int = 0,
        style: str = "teacher",
        name: str | None = None,
        direct_share: float = 0.0,
    ) -> None:
        super().__init__()
        if skill not in GENERATORS:
            raise ValueError(f"unknown toy skill {skill!r}; expected one of {sorted(GENERATORS)}")
        if style not in ("teacher", "native"):
            raise ValueError(f"style must be 'teacher' or 'native', got {style!r}")
        if not 0.0 <= float(direct_share) <= 1.0 or (direct_share and (style != "native" or skill not in STYLED)):
            raise ValueError(f"direct_share must be in [0, 1] and needs a styled target with style='native', got "
                             f"{direct_share!r} for {skill!r} / {style!r}")
        self.skill, self.style, self.seed = skill, style, int(seed)
        self.direct_share = float(direct_share)
        self.name = name or skill
        self.sizes = {"test": int(n_test), "val": int(n_val), "train": int(n_train)}
        self._splits: dict[str, list[Example]] | None = None

    def _generate(self) -> dict[str, list[Example]]:
        rng = np.random.default_rng([self.seed, zlib.crc32(self.skill.encode())])
        gen = GENERATORS[self.skill]
        kwargs = {"style": self.style} if self.skill in STYLED else {}
        seen: set[str] = set()
        out: dict[str, list[Example]] = {}
        for split in ("test", "val", "train"):
            rows: list[Example] = []
            tries = 0
            while len(rows) < self.sizes[split]:
                tries += 1
                if tries > 50 * (self.sizes[split] + 10):
                    raise ValueError(f"toy skill {self.skill!r} cannot produce {self.sizes[split]} unique {split} prompts")
                prompt, ref, ans = gen(rng, **kwargs)
                if prompt in seen:
                    continue
                seen.add(prompt)
                rows.append(Example(id=f"{self.name}-{split}-{len(rows):05d}", prompt=prompt, reference=ref, answer=ans))
            out[split] = rows
        if self.direct_share > 0:  # its own stream: the prompts do not depend on the share
            draws = np.random.default_rng([self.seed, zlib.crc32(self.skill.encode()), 1]).random(len(out["train"]))
            out["train"] = [Example(id=e.id, prompt=e.prompt, reference=e.answer, answer=e.answer)
                            if u < self.direct_share else e for e, u in zip(out["train"], draws)]
        return out

    def load_split(self, split: str) -> list[Example]:
        if self._splits is None:
            self._splits = self._generate()
        return self._splits[split]

    def extract_answer(self, completion: str) -> str | None:
        return extract(self.skill, completion)

    def solution_format(self, completion: str) -> str | None:
        """For the ``sum`` target, :func:`tms.toy.skills.solution_format` (``native`` | ``teacher`` | ``direct`` |
        ``other``); None for every other skill (no formats defined)."""
        if self.skill != "sum":
            return None
        return solution_format(completion)

    def verify(self, completion: str, answer: Any) -> float:
        got = self.extract_answer(completion)
        return float(got is not None and got == str(answer).strip())
