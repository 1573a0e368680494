"""GSM8K, MATH and MATH-500: hub datasets (or local files in their schema) graded with math-verify.

The final answer of a completion is the last ``\\boxed{…}`` (balanced braces), else the last GSM8K ``#### N``
line, else the last ``answer is …``, else the last number (:func:`tms.data.tasks.verify.final_math_answer`); math-verify
decides whether it equals the gold. A GSM8K gold is the ``#### N`` line of the dataset's ``answer`` field.

Each task reads a *train* and a *test* source through :func:`tms.data.tasks.loading.load_records`
(a hub id or a local ``.jsonl``/``.parquet``/``.csv`` file, or a directory with ``<split>.<ext>``).
The validation split is the last ``n_val`` rows of the train source, so train and val are disjoint
and the carving is deterministic. Example ids are ``<task>-<split>-<row>``, with ``row`` the row's
index in its source file, so they do not change when ``n_val`` or the limits change.

MATH-500 has only a ``test`` split: its train source is that same split by default, train = all but
the last ``n_val`` rows, val = the last ``n_val`` rows and test = all 500 rows. Training on MATH-500
(as the paper does when it is the target task) therefore trains on the test problems; pass another
``train_source`` (e.g. a local file of MATH train problems) for a held-out evaluation.
"""
from __future__ import annotations

import abc
import logging
import re
from typing import Any

from tms.data.tasks.base import Example, Task
from tms.data.tasks.loading import apply_teacher_completions, load_records
from tms.data.tasks.verify import canonical_math_answer, last_boxed, math_verify_score

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_UNBRACED_BOXED = re.compile(r"\\boxed\s+([^\s$]+)")


class MathTask(Task):
    """Shared loader for hub math datasets: train/val/test carving, limits, teacher completions.

    Subclasses set :attr:`name`, :attr:`fields` (required source columns), the hub defaults and
    :meth:`convert` (one source row -> reference, gold answer, meta; None to skip the row).

    Args:
        train_source: hub id or local file/directory for the train split (val is carved from it);
            default :attr:`hub_id`.
        test_source: hub id or local file/directory for the test split; default :attr:`hub_id`.
        config_name: hub configuration name (ignored for local files); default
            :attr:`default_config_name`.
        n_val: number of rows at the end of the train source that form the val split; default
            :attr:`default_n_val`.
        limit_train, limit_test: keep only the first rows of train / test (None: all).
        prompt_template: user prompt with a ``{problem}`` placeholder.
        teacher_completions: optional jsonl of ``{"id", "completion"}`` replacing train references.
    """

    #: source column names every row must have
    fields: tuple[str, ...] = ()
    #: default hub id and the hub split names read for our train and test splits
    hub_id: str = ""
    train_split: str = "train"
    test_split: str = "test"
    #: column holding the problem text
    problem_field: str = "problem"
    default_config_name: str | None = None
    default_n_val: int = 500

    def __init__(
        self,
        train_source: str | None = None,
        test_source: str | None = None,
        config_name: str | None = None,
        n_val: int | None = None,
        limit_train: int | None = None,
        limit_test: int | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        teacher_completions: str | None = None,
    ) -> None:
        super().__init__()
        self.train_source = train_source or self.hub_id
        self.test_source = test_source or self.hub_id
        self.config_name = config_name or self.default_config_name
        self.n_val = self.default_n_val if n_val is None else int(n_val)
        self.limit_train = None if limit_train is None else int(limit_train)
        self.limit_test = None if limit_test is None else int(limit_test)
        self.prompt_template = prompt_template
        self.teacher_completions = teacher_completions
        if self.n_val < 0:
            raise ValueError(f"{self.name}: n_val must be >= 0, got {n_val}")
        self._records: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- per-dataset schema -------------------------------------------------------------------
    @abc.abstractmethod
    def convert(self, row: dict[str, Any]) -> tuple[str, str, dict] | None:
        """``(reference, gold answer, meta)`` of a source row, or None if the row has no gold."""

    # -- loading ------------------------------------------------------------------------------
    def _load(self, source: str, source_split: str) -> list[dict[str, Any]]:
        """Rows of ``source`` (cached, so val and train read the train source once)."""
        key = (source, source_split)
        if key not in self._records:
            self._records[key] = load_records(source, source_split, self.config_name, required_fields=self.fields,
                                              field_types=dict.fromkeys(self.fields, str))
        return self._records[key]

    def _examples(self, source: str, source_split: str, split: str, rows: range | None = None) -> list[Example]:
        """Examples from rows ``rows`` (all if None) of ``source``, with ids ``<name>-<split>-<row>``."""
        records = self._load(source, source_split)
        out = []
        for i in rows if rows is not None else range(len(records)):
            converted = self.convert(records[i])
            if converted is None:
                log.warning("%s: %s row %d has no gold answer; skipped", self.name, source, i)
                continue
            reference, gold, meta = converted
            prompt = self.prompt_template.replace("{problem}", str(records[i][self.problem_field]).strip())
            out.append(Example(f"{self.name}-{split}-{i:06d}", prompt, reference, gold, meta))
        return out

    def _train_rows(self) -> int:
        """Number of rows in the train source, checking that ``n_val`` leaves some for training."""
        n = len(self._load(self.train_source, self.train_split))
        if self.n_val >= n:
            raise ValueError(
                f"{self.name}: n_val={self.n_val} leaves no training rows in {self.train_source} ({n} rows)"
            )
        return n

    def load_split(self, split: str) -> list[Example]:
        """train = train source minus its last ``n_val`` rows; val = those rows; test = test source."""
        if split == "test":
            rows = self._examples(self.test_source, self.test_split, "test")
            return rows if self.limit_test is None else rows[: self.limit_test]
        n = self._train_rows()
        if split == "val":
            return self._examples(self.train_source, self.train_split, "val", range(n - self.n_val, n))
        rows = self._examples(self.train_source, self.train_split, "train", range(n - self.n_val))
        rows = rows if self.limit_train is None else rows[: self.limit_train]
        return apply_teacher_completions(rows, self.teacher_completions)

    # -- grading ------------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """Canonical string (e.g. ``1/2``) of the final answer of ``completion``: the last ``\\boxed{…}``, else
        the last ``#### N`` line, else the last ``answer is …``, else the last number
        (:func:`tms.data.tasks.verify.canonical_math_answer`)."""
        return canonical_math_answer(completion)

    def verify(self, completion: str, answer: Any) -> float:
        """1.0 iff the final answer of ``completion`` (the last ``\\boxed{…}``, else the last ``#### N`` line,
        else the last ``answer is …``, else the last number) is math-verify-equivalent to the gold ``answer``
        (:func:`tms.data.tasks.verify.math_verify_score`; against an integer gold ``N%`` counts as ``N``)."""
        return math_verify_score(completion, answer)


def gsm8k_gold(answer: str) -> str:
    """The gold of a GSM8K ``answer`` field: the rest of the line of its last ``####`` (``#### 1,250`` gives
    ``1250``), stripped and without thousands commas; ``""`` when that line is empty."""
    return answer.rsplit("####", 1)[-1].split("\n", 1)[0].strip().replace(",", "")


def gsm8k_reference(answer: str) -> str:
    """The GSM8K rationale without ``<<a*b=c>>`` calculator annotations, ending in
    ``The answer is \\boxed{x}.`` in place of the ``#### x`` line."""
    rationale = _CALCULATOR.sub("", answer.rsplit("####", 1)[0]).strip()
    return f"{rationale}\nThe answer is \\boxed{{{gsm8k_gold(answer)}}}."


class GSM8KTask(MathTask):
    """GSM8K (Cobbe et al. 2021), ``openai/gsm8k`` config ``main``: ``question``, ``answer``."""

    name = "gsm8k"
    fields = ("question", "answer")
    hub_id = "openai/gsm8k"
    problem_field = "question"
    default_config_name = "main"

    def convert(self, row: dict[str, Any]) -> tuple[str, str, dict] | None:
        """Reference from :func:`gsm8k_reference`, gold from :func:`gsm8k_gold`; None without a ``#### N`` line."""
        answer = str(row["answer"])
        if "####" not in answer or not gsm8k_gold(answer):
            return None
        return gsm8k_reference(answer), gsm8k_gold(answer), {}


def math_gold(solution: str) -> str | None:
    """Content of the last ``\\boxed{…}``/``\\fbox{…}`` of a MATH solution (or ``\\boxed x``), else None."""
    gold = last_boxed(solution)
    if gold is None:
        unbraced = _UNBRACED_BOXED.findall(solution)
        gold = unbraced[-1] if unbraced else None
    return gold


class MATHTask(MathTask):
    """MATH (Hendrycks et al. 2021), default ``DigitalLearningGmbH/MATH-lighteval``:
    ``problem``, ``level``, ``type``, ``solution``; gold = last boxed answer of the solution."""

    name = "math"
    fields = ("problem", "solution")
    hub_id = "DigitalLearningGmbH/MATH-lighteval"

    def convert(self, row: dict[str, Any]) -> tuple[str, str, dict] | None:
        """The solution is the reference; its last boxed content is the gold answer."""
        solution = str(row["solution"]).strip()
        gold = math_gold(solution)
        if gold is None:
            return None
        return solution, gold, {"level": row.get("level"), "type": row.get("type")}


class MATH500Task(MathTask):
    """MATH-500 (Lightman et al. 2023), ``HuggingFaceH4/MATH-500`` (``test`` only): ``problem``,
    ``solution``, ``answer``, ``subject``, ``level``, ``unique_id``; gold = ``answer``.

    Train and val are carved from the test split (see the module docstring), n_val defaults to 50.
    """

    name = "math500"
    fields = ("problem", "solution", "answer")
    hub_id = "HuggingFaceH4/MATH-500"
    train_split = "test"
    default_n_val = 50

    def convert(self, row: dict[str, Any]) -> tuple[str, str, dict] | None:
        """The solution is the reference and ``answer`` the gold."""
        meta = {k: row.get(k) for k in ("subject", "level", "unique_id")}
        return str(row["solution"]).strip(), str(row["answer"]).strip(), meta
