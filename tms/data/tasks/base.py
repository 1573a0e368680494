"""The task seam: prompts, reference solutions, answer extraction and a verifier.

A *task* owns everything that is specific to one dataset: how its raw records become
:class:`Example` rows (a user prompt, a reference completion y* and a gold answer), how a
final answer is extracted from a model completion, and ``verify(completion, answer) -> float``
in [0, 1]. Everything downstream (data module, harvest, RL rewards, evaluation) only talks to
this interface, so adding a benchmark never touches the training code.

Answers are JSON-serialisable values (a string for most tasks; a dict such as
``{"numbers": [...], "target": 24}`` for Countdown) so that they can be stored in the
Parquet trajectory buffer next to the completions.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

from tms.data.tasks.loading import load_records

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Example:
    """One supervised example (x, y*).

    Attributes:
        id: stable identifier, unique within a task and split (used as the buffer key).
        prompt: the user message content, already formatted with the task's prompt template.
        reference: the reference completion y* (the assistant message content, no eos).
        answer: the gold answer passed to :meth:`Task.verify` (JSON-serialisable).
        meta: free-form extra fields (subject, level, choices ...), JSON-serialisable.
    """

    id: str
    prompt: str
    reference: str
    answer: Any
    meta: dict = dataclasses.field(default_factory=dict)


class Task(abc.ABC):
    """A dataset with a verifier. Subclasses implement :meth:`load_split` and :meth:`verify`."""

    #: short name used in configs, results and tables (e.g. ``countdown``, ``gsm8k``)
    name: str = "task"
    #: optional system prompt prepended as a ``system`` chat message
    system_prompt: str | None = None

    def __init__(self) -> None:
        self._cache: dict[str, list[Example]] = {}

    # -- data ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def load_split(self, split: str) -> list[Example]:
        """Return the examples of ``split`` (one of :data:`SPLITS`)."""

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        """Examples of ``split``, cached; the first ``limit`` if given (order is deterministic)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for task {self.name!r}; expected one of {SPLITS}")
        if split not in self._cache:
            rows = self.load_split(split)
            ids = [e.id for e in rows]
            if len(set(ids)) != len(ids):
                raise ValueError(f"task {self.name!r} split {split!r} has duplicate example ids")
            self._cache[split] = rows
        rows = self._cache[split]
        return rows if limit is None else rows[: int(limit)]

    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages for the prompt of ``example`` (system prompt, then the user turn)."""
        msgs = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        msgs.append({"role": "user", "content": example.prompt})
        return msgs

    # -- grading ------------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The final answer of ``completion`` as a canonical string, or None if there is none.

        Used for self-consistency (majority vote) and answer entropy; the default returns the
        stripped completion.
        """
        text = completion.strip()
        return text or None

    def solution_format(self, completion: str) -> str | None:
        """The name of the surface format ``completion`` is written in, or None when the task has none.

        A diagnostic of harvested trajectories (:func:`tms.evaluation.buffer_stats.buffer_diagnostics`
        reports the share of each format per checkpoint t), never part of the score. The default returns
        None for every completion: the task defines no formats and no format shares are reported.
        Override it with a pure function of the text (e.g. the toy ``sum`` target's ``native`` |
        ``teacher`` | ``direct`` | ``other``).
        """
        return None

    @abc.abstractmethod
    def verify(self, completion: str, answer: Any) -> float:
        """Score in [0, 1] of ``completion`` against the gold ``answer``. Never raises."""

    def score(self, completions: Sequence[str], answers: Sequence[Any]) -> list[float]:
        """Vectorised :meth:`verify`."""
        return [float(self.verify(c, a)) for c, a in zip(completions, answers)]


class _DatasetDefault:
    """The default of a :class:`BenchmarkTask` constructor argument: the class's own dataset setting."""

    def __repr__(self) -> str:
        return "<the dataset's default>"


DATASET_DEFAULT: Any = _DatasetDefault()


class BenchmarkTask(Task):
    """A task read through :func:`~tms.data.tasks.loading.load_records`: one source per split, a hub config, a limit.

    A subclass names its dataset with class attributes instead of repeating the constructor:
    ``default_sources`` (split -> hub id or local path, None = the split is unavailable),
    ``default_config_name``, ``hub_splits`` (the task splits train/val/test -> split names on the hub; a local
    file is the split itself, a local directory holds ``<hub split>.<ext>``) and ``required_fields``. Each
    constructor argument left at its default takes the class's value; an explicit None disables a split.
    ``limit`` keeps the first ``limit`` examples of every split (after any filtering, so ids do not depend on it).
    """

    hub_splits: dict[str, str] = {}
    required_fields: tuple[str, ...] = ()
    default_sources: dict[str, str | None] = {}
    default_config_name: str | None = None

    def __init__(
        self,
        train_source: str | None = DATASET_DEFAULT,
        val_source: str | None = DATASET_DEFAULT,
        test_source: str | None = DATASET_DEFAULT,
        config_name: str | None = DATASET_DEFAULT,
        limit: int | None = None,
    ) -> None:
        super().__init__()
        given = {"train": train_source, "val": val_source, "test": test_source}
        self.sources = {split: self.default_sources.get(split) if v is DATASET_DEFAULT else v for split, v in given.items()}
        self.config_name = self.default_config_name if config_name is DATASET_DEFAULT else config_name
        self.limit = None if limit is None else int(limit)

    def load_split(self, split: str) -> list[Example]:
        source = self.sources.get(split)
        if not source:
            raise ValueError(
                f"task {self.name!r} has no data for split {split!r}: set {split}_source to a hub id "
                "or a local .jsonl/.parquet file"
            )
        rows = load_records(source, self.hub_splits.get(split, split), self.config_name, self.required_fields)
        examples = self.build_examples(rows, str(source))
        return examples if self.limit is None else examples[: self.limit]

    @abc.abstractmethod
    def build_examples(self, rows: list[dict[str, Any]], where: str) -> list[Example]:
        """Examples from the raw ``rows`` of one split; errors name ``where`` (the source)."""
