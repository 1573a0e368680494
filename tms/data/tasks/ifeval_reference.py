"""lm-evaluation-harness's own IFEval checkers as the reference grader (optional).

:class:`~tms.data.tasks.ifeval.IFEvalTask` grades with these when ``checker="lm_eval"`` (or
``"auto"`` and they can run). They run lm-eval's files ``lm_eval/tasks/ifeval/{instructions_util,
instructions, instructions_registry, utils}.py`` unchanged, through lm-eval's own
``test_instruction_following_strict`` / ``test_instruction_following_loose``, one instruction at a
time, so an unknown id or a checker that raises scores that instruction False (logged once)
instead of failing the prompt.

The files are loaded from the installed ``lm_eval`` distribution without importing the
``lm_eval.tasks`` package (whose ``__init__`` pulls in the whole harness: torch, datasets,
sacrebleu, ...): each is executed as a module while temporary ``sys.modules`` entries answer its
``from lm_eval.tasks.ifeval import ...`` lines, then the entries are removed again. When lm-eval
itself already imported them, those modules are used.

They can run when ``lm_eval``, ``langdetect``, ``nltk`` and ``immutabledict`` are importable and
nltk's ``punkt_tab`` data is installed: lm-eval's ``number_sentences`` and
``capital_word_frequency`` checks need it, and importing ``instructions_util`` without it starts
a download, which tms never does (``python -m nltk.downloader punkt_tab`` installs it).
Nothing here is imported before a check is asked for.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Sequence

from tms.data.tasks.ifeval_checks import _warn_once, seeded_langdetect

#: lm-eval's IFEval modules, in the order they import each other
LM_EVAL_MODULES = ("instructions_util", "instructions", "instructions_registry", "utils")
LM_EVAL_PACKAGE = "lm_eval.tasks.ifeval"
REQUIRED_PACKAGES = ("lm_eval", "langdetect", "nltk", "immutabledict", "packaging")
PUNKT = "tokenizers/punkt_tab/english/"


def lm_eval_ifeval_dir() -> Path | None:
    """The installed ``lm_eval/tasks/ifeval`` directory, found without importing lm_eval, or None."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tasks" / "ifeval"


def lm_eval_unavailable(require_punkt: bool = True) -> str | None:
    """Why lm-eval's IFEval checkers cannot run here, or None when they can.

    Checks that the packages are importable, that lm-eval ships the four IFEval files and (unless
    ``require_punkt`` is False) that nltk finds ``punkt_tab``; imports nothing but nltk.
    """
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    directory = lm_eval_ifeval_dir()
    absent = [name for name in LM_EVAL_MODULES if directory is None or not (directory / f"{name}.py").is_file()]
    if absent:
        return f"this lm_eval has no {LM_EVAL_PACKAGE} module(s) {absent} (looked in {directory})"
    if require_punkt:
        import nltk

        try:
            nltk.data.find(PUNKT)
        except LookupError:
            return (f"nltk data {PUNKT!r} is not installed (lm-eval's number_sentences and capital_word_frequency "
                    "need it; tms does not download it: python -m nltk.downloader punkt_tab)")
    return None


@functools.lru_cache(maxsize=None)
def lm_eval_ifeval(require_punkt: bool = True) -> types.ModuleType:
    """lm-eval's ``lm_eval.tasks.ifeval.utils`` module (its ``instructions_registry`` as an attribute).

    Raises ImportError naming the reason when :func:`lm_eval_unavailable` gives one. langdetect is
    seeded first (:func:`~tms.data.tasks.ifeval_checks.seeded_langdetect`), so lm-eval's language
    checks are deterministic too.
    """
    reason = lm_eval_unavailable(require_punkt)
    if reason:
        raise ImportError(f"lm-eval's IFEval checkers cannot run: {reason}")
    seeded_langdetect()
    loaded = sys.modules.get(f"{LM_EVAL_PACKAGE}.utils")
    if loaded is not None and hasattr(loaded, "test_instruction_following_strict"):
        return loaded
    return _load_by_file(lm_eval_ifeval_dir())


def _load_by_file(directory: Path) -> types.ModuleType:
    """Execute lm-eval's IFEval files as modules, with temporary ``sys.modules`` entries for their imports."""
    names = [LM_EVAL_PACKAGE] + [f"{LM_EVAL_PACKAGE}.{name}" for name in LM_EVAL_MODULES]
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    package = types.ModuleType(LM_EVAL_PACKAGE)
    package.__path__ = [str(directory)]
    sys.modules[LM_EVAL_PACKAGE] = package
    try:
        for name in LM_EVAL_MODULES:
            spec = importlib.util.spec_from_file_location(f"{LM_EVAL_PACKAGE}.{name}", directory / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            setattr(package, name, module)
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return package.utils


def check_instructions_lm_eval(
    response: str,
    instruction_ids: Sequence[str],
    kwargs_list: Sequence[dict | None],
    loose: bool = False,
    prompt: str = "",
) -> list[bool]:
    """Per-instruction results of lm-eval's ``test_instruction_following_strict`` (or ``_loose``).

    ``prompt`` is passed on as lm-eval's ``InputExample.prompt``; lm-eval 0.4.13 only reads it for an
    instruction with a ``prompt`` argument, which none of the 25 has.
    """
    if len(instruction_ids) != len(kwargs_list):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs dicts")
    utils = lm_eval_ifeval()
    test = utils.test_instruction_following_loose if loose else utils.test_instruction_following_strict
    return [_one(utils, test, response, str(i), dict(kw or {}), prompt) for i, kw in zip(instruction_ids, kwargs_list)]


def _one(utils: Any, test: Any, response: str, instruction_id: str, kwargs: dict, prompt: str) -> bool:
    """One instruction through lm-eval's grader; False (logged once) for an unknown id or an error."""
    if instruction_id not in utils.instructions_registry.INSTRUCTION_DICT:
        _warn_once(instruction_id, f"IFEval: unknown instruction id {instruction_id!r} is scored as not followed")
        return False
    example = utils.InputExample(key=0, instruction_id_list=[instruction_id], prompt=prompt, kwargs=[kwargs])
    try:
        return bool(test(example, response).follow_instruction_list[0])
    except Exception as err:  # bad kwargs for this checker: not followed, never a crash
        _warn_once(f"lm_eval:{instruction_id}:{err}", f"IFEval (lm-eval): {instruction_id!r} raised {err!r}; "
                   "scored as not followed")
        return False
