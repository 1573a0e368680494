"""A task that concatenates other tasks' examples (θ0 pretraining on several skills)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tms.data.tasks.base import Example, Task


class TaskMixture(Task):
    """The union of several tasks' splits; ``answer`` is ``{"task": name, "answer": ...}``.

    ``verify`` dispatches to the member task named in the answer. ``repeats[name] = r`` includes
    that task's *train* examples r times (ids suffixed ``#1`` .. ``#r-1`` for the copies).
    """

    def __init__(self, tasks: Sequence[Task], name: str = "mixture", repeats: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.tasks = {t.name: t for t in tasks}
        if len(self.tasks) != len(tasks):
            raise ValueError("TaskMixture: member tasks must have distinct names")
        self.repeats = {k: int(v) for k, v in (repeats or {}).items()}
        unknown = set(self.repeats) - set(self.tasks)
        if unknown or any(v < 1 for v in self.repeats.values()):
            raise ValueError(f"TaskMixture repeats: unknown tasks {sorted(unknown)} or a count < 1 in {self.repeats}")
        self.name = name

    def load_split(self, split: str) -> list[Example]:
        rows = []
        for name, task in self.tasks.items():
            copies = self.repeats.get(name, 1) if split == "train" else 1
            for r in range(copies):
                suffix = f"#{r}" if r else ""
                rows += [Example(id=f"{name}/{e.id}{suffix}", prompt=e.prompt, reference=e.reference,
                                 answer={"task": name, "answer": e.answer}, meta={**e.meta, "task": name})
                         for e in task.examples(split)]
        return rows

    def messages(self, example: Example) -> list[dict[str, str]]:
        return self.tasks[example.meta["task"]].messages(example)

    def verify(self, completion: str, answer: Any) -> float:
        return self.tasks[answer["task"]].verify(completion, answer["answer"])
