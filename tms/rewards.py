"""Verifiers: pure functions that grade a completion against a gold answer, returning 0.0 or 1.0.

* :func:`extract_final_answer` finds the final answer of a completion: the last ``<answer>…</answer>``,
  else the last balanced ``\\boxed{…}``.
* :func:`countdown_verify` checks a Countdown expression with an AST allow-list and exact rational
  arithmetic (no ``eval``).
* :func:`math_verify_score` / :func:`canonical_math_answer` use the ``math-verify`` library for
  symbolic answer equivalence and for a canonical answer string (majority vote).
* :func:`exact_match_score` compares normalised strings.

No function here raises on bad model output; a malformed completion scores 0.0.
"""
from __future__ import annotations

import ast
import re
import threading
from collections import Counter
from fractions import Fraction
from typing import Any, Sequence

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")

#: longest Countdown expression accepted (characters, after extraction)
COUNTDOWN_MAX_CHARS = 256
#: deepest expression tree accepted by the Countdown walker
COUNTDOWN_MAX_DEPTH = 32
#: characters a Countdown expression may contain after normalisation (no letters, dots, underscores)
_COUNTDOWN_CHARS = re.compile(r"[0-9+\-*/()\s]+")
_COUNTDOWN_REPLACEMENTS = (
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("\\div", "/"),
    ("×", "*"),
    ("·", "*"),
    ("÷", "/"),
    ("−", "-"),
)


# -- answer extraction ----------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) whose braces balance, else None.

    Braces are matched by depth counting; escaped braces ``\\{`` and ``\\}`` are literal text and do
    not change the depth, so ``\\boxed{\\{1, 2\\}}`` yields ``\\{1, 2\\}``.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        depth, i = 1, match.end()
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end() : i].strip()
            i += 1
    return None


def extract_final_answer(text: str) -> str | None:
    """The final answer of ``text``: the stripped content of the last ``<answer>…</answer>`` if there
    is one, else of the last balanced ``\\boxed{…}``, else None."""
    if not isinstance(text, str):
        return None
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    return last_boxed(text)


# -- Countdown ------------------------------------------------------------------------------------
def normalize_countdown_expression(expr: str) -> str:
    """``expr`` with unicode/LaTeX operators (× · ÷ −, ``\\times \\cdot \\div``) mapped to ``* /  -``."""
    for old, new in _COUNTDOWN_REPLACEMENTS:
        expr = expr.replace(old, new)
    return expr


def _evaluate(node: ast.AST, leaves: list[int], depth: int = 0) -> Fraction:
    """Exact value of an allow-listed AST: int constants and ``+ - * /`` BinOps only.

    Appends every integer literal to ``leaves``; raises ValueError on any other node, on depth
    beyond :data:`COUNTDOWN_MAX_DEPTH`, and ZeroDivisionError on division by zero.
    """
    if depth > COUNTDOWN_MAX_DEPTH:
        raise ValueError("expression too deep")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        leaves.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp):
        left = _evaluate(node.left, leaves, depth + 1)
        right = _evaluate(node.right, leaves, depth + 1)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def countdown_value(expr: str) -> tuple[Fraction, list[int]] | None:
    """Exact value and integer literals of a Countdown expression, or None if it is not one.

    A Countdown expression uses non-negative integer literals, binary ``+ - * /`` and parentheses
    (after :func:`normalize_countdown_expression`); anything else (unary minus, ``**``, ``//``,
    floats, names, calls, over :data:`COUNTDOWN_MAX_CHARS` characters, division by zero) is rejected.
    """
    if not isinstance(expr, str) or len(expr) > COUNTDOWN_MAX_CHARS:
        return None
    expr = normalize_countdown_expression(expr).strip()
    if not expr or not _COUNTDOWN_CHARS.fullmatch(expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
        leaves: list[int] = []
        value = _evaluate(tree.body, leaves)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None
    return value, leaves


def countdown_verify(completion: str, numbers: Sequence[int], target: int) -> float:
    """1.0 iff the final answer of ``completion`` is an expression that uses the multiset ``numbers``
    exactly (each given number as many times as it is given, no others) and whose exact rational
    value equals ``target``; 0.0 otherwise, including for any malformed input. Never raises."""
    try:
        answer = extract_final_answer(completion)
        if answer is None:
            return 0.0
        parsed = countdown_value(answer)
        if parsed is None:
            return 0.0
        value, leaves = parsed
        if Counter(leaves) != Counter(int(n) for n in numbers):
            return 0.0
        return 1.0 if value == Fraction(int(target)) else 0.0
    except Exception:  # noqa: BLE001 - a verifier must never raise on model output
        return 0.0


# -- math-verify ----------------------------------------------------------------------------------
def _math_verify_timeouts() -> int | None:
    """Timeout (s) for math-verify: 5 in the main thread, None elsewhere.

    math-verify implements timeouts with ``signal.alarm``, which only works in the main thread; in
    other threads (data-loader workers, async reward servers) its timeouts must be disabled.
    """
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse_math(text: str) -> list:
    """math-verify's default extraction (LaTeX + plain expressions) of ``text``; [] on failure."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        return parse(text, parsing_timeout=_math_verify_timeouts())
    except (Exception, TimeoutException):  # noqa: BLE001 - TimeoutException is a BaseException
        return []


def parse_gold(gold: str) -> list:
    """Parse a gold answer string such as ``72`` or ``\\frac{1}{2}``.

    The gold is wrapped as inline math ``$gold$`` (so LaTeX such as ``10\\%`` or ``3\\sqrt{2}``
    parses), falling back to ``\\boxed{gold}`` and then to the bare string.
    """
    for wrapped in (f"${gold}$", f"\\boxed{{{gold}}}", gold):
        parsed = _parse_math(wrapped)
        if parsed:
            return parsed
    return []


def math_verify_score(completion: str, gold: Any) -> float:
    """1.0 iff math-verify finds the answer of ``completion`` equivalent to ``gold``, else 0.0.

    The completion is parsed with math-verify's default extraction (``\\boxed{}`` first, then the
    last LaTeX/plain expression); equivalence is symbolic or numeric (``1/2 = 0.5 = \\frac{1}{2}``).
    Safe to call from any thread; never raises.
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = parse_gold(str(gold).strip())
        pred_parsed = _parse_math(completion)
        if not gold_parsed or not pred_parsed:
            return 0.0
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=_math_verify_timeouts())
        return 1.0 if ok else 0.0
    except (Exception, TimeoutException):  # noqa: BLE001
        return 0.0


def canonical_math_answer(completion: str) -> str | None:
    """A canonical string of the answer math-verify extracts from ``completion``, or None.

    The first parsed candidate is a SymPy object (or a string when parsing failed); floats inside it
    are replaced by the rationals they spell, so ``0.5``, ``1/2`` and ``\\frac{1}{2}`` all give
    ``"1/2"``. Used to group answers for majority vote and answer entropy.
    """
    import sympy

    parsed = _parse_math(completion) if isinstance(completion, str) else []
    if not parsed:
        return None
    first = parsed[0]
    try:
        if isinstance(first, sympy.Basic):
            first = first.xreplace({f: sympy.Rational(str(f)) for f in first.atoms(sympy.Float)})
        text = str(first).strip()
    except Exception:  # noqa: BLE001
        return None
    return text or None


# -- exact match ----------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Strip, collapse runs of whitespace to one space, case-fold and drop trailing periods."""
    return " ".join(text.split()).casefold().rstrip(".").strip()


def exact_match_score(completion: str, gold: Any, normalize: bool = True) -> float:
    """1.0 iff the final answer of ``completion`` (the whole completion if it has none) equals
    ``gold``, both passed through :func:`normalize_text` when ``normalize``; else 0.0."""
    if not isinstance(completion, str):
        return 0.0
    answer = extract_final_answer(completion)
    pred = completion if answer is None else answer
    gold = str(gold)
    if normalize:
        pred, gold = normalize_text(pred), normalize_text(gold)
    return 1.0 if pred == gold else 0.0
