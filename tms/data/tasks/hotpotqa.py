"""HotpotQA, distractor setting (``hotpotqa/hotpot_qa``, config ``distractor``).

Each question comes with ten paragraphs (two gold, eight distractors). The prompt lists them (cut
to ``max_context_chars`` characters) and asks for a final ``Answer: <span>`` line. Grading follows
the official HotpotQA evaluation script (``hotpot_evaluate_v1.py``): the answer is normalised as in
SQuAD (lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace), exact match
is equality of the normalised strings, and token F1 is 0 whenever either side normalises to
``yes``/``no``/``noanswer`` and the two differ.

Schema: ``id``, ``question``, ``answer``, ``type``, ``level``, ``supporting_facts``, ``context``.
On the hub ``context`` is ``{"title": [...], "sentences": [[...], ...]}``; the original JSON
release's list of ``[title, sentences]`` pairs is accepted too. The distractor test set is
hidden, so the standard evaluation (and the default ``test`` split here) is the ``validation``
split; ``val`` has no default source, to keep it disjoint from ``test``.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

from tms.data.tasks.base import BenchmarkTask, Example

HUB_ID = "hotpotqa/hotpot_qa"
DEFAULT_INSTRUCTION = (
    "Answer the question using the paragraphs above. Think step by step, then give the final answer "
    'as a short span on the last line, in the form "Answer: <answer>".'
)
_ANSWER_LINE = re.compile(r"\banswer(?:\s+is\s+|\s*[:：]\s*)(.+)", re.IGNORECASE)
_YES_NO = ("yes", "no", "noanswer")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD/HotpotQA normalisation: lower-case, drop punctuation and a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are equal (official ``exact_match_score``)."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised strings (official ``f1_score``, yes/no/noanswer special case)."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _YES_NO or ref in _YES_NO) and pred != ref:
        return 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def final_answer(completion: str) -> str | None:
    """The text after the last ``Answer:`` / ``answer is`` in ``completion``, else its last line.

    Markdown emphasis, surrounding quotes and a trailing period are removed.
    """
    lines = [line.strip() for line in (completion or "").splitlines() if line.strip()]
    if not lines:
        return None
    answer = lines[-1]
    for line in lines:
        match = _ANSWER_LINE.search(line)
        if match:
            answer = match.group(1)
    answer = answer.replace("**", "").strip("\"'`*_ ").rstrip(".").strip()
    return answer or None


def format_context(context: Any, max_chars: int | None) -> str:
    """Paragraphs as ``Title: text`` blocks, cut so that the result has at most ``max_chars`` chars."""
    if isinstance(context, dict):
        pairs = list(zip(context["title"], context["sentences"]))
    else:
        pairs = [(title, sentences) for title, sentences in context]
    text = "\n\n".join(f"{title}: {''.join(sentences).strip()}" for title, sentences in pairs)
    return text if not max_chars or len(text) <= max_chars else text[: int(max_chars)].rstrip()


class HotpotQATask(BenchmarkTask):
    """HotpotQA distractor; ``verify`` is exact match, :meth:`metrics` gives EM and F1."""

    name = "hotpotqa"
    hub_splits = {"train": "train", "val": "validation", "test": "validation"}
    required_fields = ("id", "question", "answer", "context")
    default_sources = {"train": HUB_ID, "val": None, "test": HUB_ID}
    default_config_name = "distractor"

    def __init__(
        self,
        max_context_chars: int | None = 6000,
        instruction: str = DEFAULT_INSTRUCTION,
        **dataset: Any,
    ) -> None:
        super().__init__(**dataset)
        self.max_context_chars = max_context_chars
        self.instruction = instruction

    def build_examples(self, rows: list[dict[str, Any]], where: str) -> list[Example]:
        out = []
        for i, row in enumerate(rows):
            try:
                context = format_context(row["context"], self.max_context_chars)
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{where}: row {i} field 'context' must be {{'title': [...], 'sentences': [[...]]}} "
                    f"or a list of [title, sentences] pairs ({err!r})"
                ) from err
            prompt = f"{context}\n\nQuestion: {row['question'].strip()}\n\n{self.instruction}"
            meta = {"type": row.get("type"), "level": row.get("level")}
            out.append(Example(str(row["id"]), prompt, f"Answer: {row['answer']}", str(row["answer"]), meta))
        return out

    def extract_answer(self, completion: str) -> str | None:
        return normalize_answer(final_answer(completion) or "") or None

    def metrics(self, completion: str, answer: Any) -> dict[str, float]:
        """``{"em": ..., "f1": ...}`` of the final answer of ``completion`` against ``answer``."""
        prediction = final_answer(completion) or ""
        return {"em": exact_match(prediction, str(answer)), "f1": f1(prediction, str(answer))}

    def verify(self, completion: str, answer: Any) -> float:
        return self.metrics(completion, answer)["em"]
