"""IFEval (``google/IFEval``): 541 prompts with verifiable formatting instructions.

Schema (one ``train`` split): ``key`` (int), ``prompt``, ``instruction_id_list`` (list of ids such
as ``punctuation:no_comma``), ``kwargs`` (one dict per instruction). In the hub's Parquet the
kwargs dicts share one struct type, so every dict carries all ~20 argument names with None for
the unused ones; they are stripped here.

The paper evaluates IFEval on this same split, so all task splits map to the hub's ``train``
split; only ``test`` has a default source (set ``train_source`` to train on it). There are no
reference completions (``reference`` is empty): to train on IFEval pass ``teacher_completions``, a
jsonl of ``{"id", "completion"}`` (ids are the ``key`` values) applied to the train split.

``verify`` is the paper's metric, strict prompt-level accuracy (every instruction followed);
:meth:`IFEvalTask.metrics` adds the loose and instruction-level variants under lm-eval's names.

``checker`` chooses who grades: ``lm_eval`` runs lm-evaluation-harness's own checkers
(:mod:`tms.data.tasks.ifeval_reference`; needs ``lm_eval``, ``nltk`` with its ``punkt_tab`` data,
``langdetect`` and ``immutabledict``), ``offline`` the re-implementation of
:mod:`tms.data.tasks.ifeval_checks` (its differences from the official checker are listed there),
``auto`` (the default) lm-eval's when they can run here, else the offline ones. ``auto`` depends on
what is installed, so pin ``lm_eval`` or ``offline`` where results must not depend on the machine.
"""
from __future__ import annotations

import logging
from typing import Any

from tms.data.tasks import ifeval_reference
from tms.data.tasks.base import BenchmarkTask, Example
from tms.data.tasks.ifeval_checks import check_instructions, seeded_langdetect
from tms.data.tasks.loading import apply_teacher_completions

log = logging.getLogger(__name__)
CHECKERS = ("auto", "lm_eval", "offline")


def resolve_checker(checker: str) -> str:
    """``lm_eval`` or ``offline``: ``checker`` itself, or for ``auto`` lm-eval's when it can run here.

    Raises ValueError for an unknown name and ImportError (with the reason) for ``lm_eval`` when
    lm-eval's checkers cannot run.
    """
    if checker not in CHECKERS:
        raise ValueError(f"IFEvalTask: checker must be one of {CHECKERS}, got {checker!r}")
    if checker == "offline":
        return "offline"
    reason = ifeval_reference.lm_eval_unavailable()
    if checker == "lm_eval" and reason:
        raise ImportError(f"IFEvalTask: checker='lm_eval' but lm-eval's IFEval checkers cannot run: {reason}")
    if reason:
        log.info("IFEval: checker=auto grades with the offline checks (lm-eval's cannot run: %s)", reason)
        return "offline"
    return "lm_eval"


class IFEvalTask(BenchmarkTask):
    """IFEval; the answer is ``{"instruction_id_list": [...], "kwargs": [...]}``."""

    name = "ifeval"
    hub_splits = {"train": "train", "val": "train", "test": "train"}
    required_fields = ("key", "prompt", "instruction_id_list", "kwargs")
    default_sources = {"train": None, "val": None, "test": "google/IFEval"}
    default_config_name = None

    def __init__(
        self,
        teacher_completions: str | None = None,
        checker: str = "auto",
        **dataset: Any,
    ) -> None:
        """``teacher_completions``: jsonl of train-split references; ``checker``: ``auto`` | ``lm_eval`` |
        ``offline`` (see the module docstring), resolved here (``self.checker``); ``dataset``: as
        :class:`BenchmarkTask`."""
        super().__init__(**dataset)
        self.teacher_completions = teacher_completions
        self.checker = resolve_checker(checker)

    def load_split(self, split: str) -> list[Example]:
        examples = super().load_split(split)
        return apply_teacher_completions(examples, self.teacher_completions) if split == "train" else examples

    def build_examples(self, rows: list[dict[str, Any]], where: str) -> list[Example]:
        out = []
        for i, row in enumerate(rows):
            ids, kwargs = list(row["instruction_id_list"]), list(row["kwargs"])
            if len(ids) != len(kwargs):
                raise ValueError(f"{where}: row {i} has {len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
            answer = {
                "instruction_id_list": [str(x) for x in ids],
                "kwargs": [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs],
            }
            out.append(Example(str(row["key"]), row["prompt"], "", answer, {}))
        return out

    def grader_identity(self) -> dict[str, Any]:
        """What decides this task's verdicts on this machine, beyond the code: the resolved checker and whether
        langdetect is installed (the eval stage key records it, so a cached score is not reused under another)."""
        return {"checker": self.checker, "langdetect": seeded_langdetect() is not None}

    def instruction_results(self, completion: str, answer: dict, loose: bool = False) -> list[bool]:
        """Whether each instruction of ``answer`` is followed (strict, or loose if ``loose``), by ``self.checker``."""
        if self.checker == "lm_eval":
            return ifeval_reference.check_instructions_lm_eval(
                completion or "", answer["instruction_id_list"], answer["kwargs"], loose=loose
            )
        return check_instructions(completion or "", answer["instruction_id_list"], answer["kwargs"], loose=loose)

    def metrics(self, completion: str, answer: dict) -> dict[str, Any]:
        """lm-eval's four IFEval metrics for one prompt (instruction-level ones as lists of bools).

        Instruction-level accuracy over a dataset is the mean of the concatenated lists.
        """
        strict = self.instruction_results(completion, answer)
        loose = self.instruction_results(completion, answer, loose=True)
        return {
            "prompt_level_strict_acc": float(all(strict)),
            "inst_level_strict_acc": strict,
            "prompt_level_loose_acc": float(all(loose)),
            "inst_level_loose_acc": loose,
        }

    def verify(self, completion: str, answer: Any) -> float:
        return float(all(self.instruction_results(completion, answer)))
