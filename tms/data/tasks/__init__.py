"""Tasks: prompts + references + verifier. See :mod:`tms.data.tasks.base`."""
from tms.data.tasks.base import SPLITS, Example, Task

__all__ = ["SPLITS", "Example", "Task"]
