"""Verifiers: pure functions that grade a completion against a gold answer, returning 0.0 or 1.0.

* :func:`extract_final_answer` finds the final answer of a completion: the last ``<answer>…</answer>``,
  else the last balanced ``\\boxed{…}``.
* :func:`countdown_verify` checks a Countdown expression with an AST allow-list and exact rational
  arithmetic (no ``eval``).
* :func:`final_math_answer` finds the final answer of a math solution (GSM8K, MATH, MATH-500), the first
  rule that applies: the last ``\\boxed{…}``, else the last ``#### N`` line, else the last ``answer is …``,
  else the last number. :func:`math_verify_score` / :func:`canonical_math_answer` parse that answer with the
  ``math-verify`` library for symbolic answer equivalence and for a canonical answer string (majority vote).
* :func:`exact_match_score` compares normalised strings.

No function here raises on bad model output; a malformed completion scores 0.0.
"""
from __future__ import annotations

import ast
import re
import threading
from collections import Counter
from fractions import Fraction
from typing import Any, NamedTuple, Sequence

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


# -- final answer of a math solution --------------------------------------------------------------
_EMPTY_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{\s*\}")
#: a ``#### N`` line, GSM8K's final-answer line (``####`` anywhere on a line, not part of ``#####``)
_HASH_LINE = re.compile(r"(?<!#)####(?!#)[ \t]*(?P<answer>[^\n]*)")
#: the N of a ``#### N`` line: one number (sign, currency, thousands commas, decimals, ``/d``, ``%``), bold
#: allowed, then at most unit words and a full stop: ``72``, ``-5``, ``$1,234.00``, ``10%``, ``**18** dollars.``;
#: not a markdown heading such as ``1. Setup`` or ``Step 2``
_HASH_ANSWER = re.compile(
    r"\**[-+]? ?(?:\\?\$|[€£¥])? ?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?: ?/ ?\d+)?(?: ?\\?%)?\**"
    r"(?:[ \t]+[A-Za-z][A-Za-z \t]*)?\.?"
)
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
#: what an ``answer is`` clause must hold to count as an answer: a digit, a LaTeX command or math
_ANSWER_LIKE = re.compile(r"\d|\\[A-Za-z]|\$")
#: LaTeX math: ``$$…$$``, ``\[…\]``, ``\(…\)``, or ``$…$`` by pandoc's rule (no space inside the dollars, no
#: digit after the closing one), so that prices such as ``$5 and $7`` are not math
_MATH_ENV = re.compile(
    r"(?<!\\)\$\$.+?(?<!\\)\$\$|\\\[.+?\\\]|\\\(.+?\\\)"
    r"|(?<![\\$])\$(?=[^\s$])(?:\\.|[^$\n\\])*?(?<=[^\s\\])\$(?!\d)",
    re.DOTALL,
)
#: what joins several math spans into one answer (as in math-verify): ``,``, ``and``, ``or``, ``, and``
_MATH_JOIN = re.compile(r"\s*(?:,?\s*(?:and|or)|,)\s*")
#: a number in running text: ``-5``, ``1,234``, ``2.5``, ``3/4``, ``10%`` (not the ``2`` of ``x2`` or ``1.5``'s ``5``)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?(?:\s*\\?%)?")
_LATEX_MARKUP = re.compile(r"\\[A-Za-z]|[\^_{}]")
_MATH_DELIMITER = re.compile(r"\$|\\\(|\\\[")
_INTEGER = re.compile(r"[-+]?\d+")
_PERCENT_AFTER_DIGIT = re.compile(r"(\d)\s*\\?%")

#: the rules of :func:`final_math_answer`, in priority order
MATH_ANSWER_RULES = ("boxed", "####", "answer is", "last number")


class FinalAnswer(NamedTuple):
    """The final answer of a math solution: its ``text`` and the ``rule`` (one of :data:`MATH_ANSWER_RULES`)
    that found it."""

    text: str
    rule: str


def last_hash_answer(text: str) -> str | None:
    """The N of the last ``#### N`` line of ``text`` (GSM8K's final-answer line), stripped, else None.

    N must be one number, optionally with a sign, currency, thousands commas, decimals, ``%``, bold and unit
    words (``#### 72``, ``#### $1,234.00``, ``#### 10%``, ``#### 18 dollars``); a ``####`` line with other
    text (a markdown heading) is not a ``#### N`` line.
    """
    for match in reversed(list(_HASH_LINE.finditer(text))):
        answer = match.group("answer").strip()
        if _HASH_ANSWER.fullmatch(answer):
            return answer
    return None


def _leading_clause(text: str) -> str:
    """``text`` up to its first clause end outside braces and LaTeX math: a newline, ``,`` or ``;`` before white
    space (not before more math: ``$2$, $3$`` is one clause), or ``.``/``!``/``?`` before white space or the end."""
    depth, i = 0, 0
    while i < len(text):
        env = _MATH_ENV.match(text, i) if depth == 0 else None
        if env:
            i = env.end()
            continue
        ch, after = text[i], text[i + 1 : i + 2]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        elif depth == 0 and (ch == "\n" or (ch in ".!?" and not after.strip())):
            break
        elif depth == 0 and ch in ",;" and after.isspace():
            if not _MATH_ENV.match(text, len(text) - len(text[i + 1 :].lstrip())):
                break
        i += 1
    return text[:i].strip()


def last_answer_is(text: str) -> str | None:
    """The answer stated by the last ``answer is`` (or ``answer:``) of ``text``, else None.

    Case-insensitive, so ``The final answer is $42$`` and ``Answer: 42`` count. The answer is the clause that
    follows (leading white space, newlines, ``:`` and ``*`` skipped; see :func:`_leading_clause`): ``The answer is
    42, since 6*7 = 42`` gives ``42``. It counts only if it holds a digit, a LaTeX command or math.
    """
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    rest = rest[re.match(r"[\s:*]*", rest).end() :]
    clause = _leading_clause(rest).rstrip("*").strip()
    return clause if _ANSWER_LIKE.search(clause) else None


def last_number(text: str) -> str | None:
    """The last number of ``text`` (``-5``, ``1,234``, ``2.5``, ``3/4``, ``10%``), else None; a number inside
    LaTeX math stands for that math (``$\\frac{1}{2}$``, not its ``2``), joined with up to 5 math spans before it
    that ``,``/``and``/``or`` connect (``$x = 2$ and $x = 3$``), as math-verify reads them."""
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return None
    last = numbers[-1]
    envs = list(_MATH_ENV.finditer(text))
    for k, env in enumerate(envs):
        if env.start() <= last.start() < env.end():
            first = k
            while first > max(k - 5, 0) and _MATH_JOIN.fullmatch(text, envs[first - 1].end(), envs[first].start()):
                first -= 1
            return text[envs[first].start() : env.end()]
    return last.group(0)


def final_math_answer(text: str) -> FinalAnswer | None:
    """The final answer of a math solution: the first of these rules that finds one, else None.

    1. ``boxed``: the content of the last non-empty ``\\boxed{…}``/``\\fbox{…}`` with balanced braces
       (:func:`last_boxed`; nested braces such as ``\\boxed{\\frac{\\sqrt{3}}{2}}`` are kept whole);
    2. ``####``: the N of the last ``#### N`` line, GSM8K's final line (:func:`last_hash_answer`);
    3. ``answer is``: the answer after the last ``answer is`` / ``answer:`` (:func:`last_answer_is`);
    4. ``last number``: the last number of the text (:func:`last_number`).

    A rule wins wherever its match is: ``\\boxed{14}`` before ``#### 15`` gives ``14``, and ``#### 14`` before
    ``So the answer is 15.`` gives ``14``.
    """
    if not isinstance(text, str):
        return None
    boxed = last_boxed(_EMPTY_BOXED.sub("", text))
    if boxed:
        return FinalAnswer(boxed, "boxed")
    for rule, find in (("####", last_hash_answer), ("answer is", last_answer_is), ("last number", last_number)):
        found = find(text)
        if found:
            return FinalAnswer(found, rule)
    return None


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


def parse_final_answer(answer: FinalAnswer) -> list:
    """math-verify's parse of a :class:`FinalAnswer`: the first of three readings that gives a SymPy value, else
    the first non-empty one, else [].

    Boxed content, and text with LaTeX markup but no math delimiters (``\\frac{1}{2}``), is read as inline math
    ``$text$`` first (``\\{1, 2\\}``, ``3\\sqrt{2}``, ``10\\%``); other text as plain text first (``1,250 boxes``,
    ``$18``, ``10%``, ``$\\frac{1}{2}$``). The other readings (``$text$``, ``\\boxed{text}``, plain) follow.
    """
    text = answer.text
    latex = answer.rule == "boxed" or (not _MATH_DELIMITER.search(text) and bool(_LATEX_MARKUP.search(text)))
    readings = (f"${text}$", f"\\boxed{{{text}}}", text) if latex else (text, f"${text}$", f"\\boxed{{{text}}}")
    first: list = []
    for reading in readings:
        parsed = _parse_math(reading)
        if parsed and not isinstance(parsed[0], str):
            return parsed
        first = first or parsed
    return first


def math_verify_score(completion: str, gold: Any) -> float:
    """1.0 iff math-verify finds the final answer of ``completion`` equivalent to ``gold``, else 0.0.

    The final answer is :func:`final_math_answer`'s (the last ``\\boxed{…}``, else the last ``#### N`` line,
    else the last ``answer is …``, else the last number), parsed by :func:`parse_final_answer`; the gold by
    :func:`parse_gold`. Equivalence is symbolic or numeric (``1/2 = 0.5 = \\frac{1}{2}``; ``1,234 = 1234.00``;
    ``\\$92 = 92``). Against an integer gold (GSM8K's) ``N%`` counts as ``N``: ``\\boxed{10\\%}`` and
    ``#### 10%`` match ``10``. Safe to call from any thread; never raises.
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        answer = final_math_answer(completion)
        if answer is None:
            return 0.0
        gold = str(gold).strip()
        if _INTEGER.fullmatch(gold.replace(",", "")):
            answer = answer._replace(text=_PERCENT_AFTER_DIGIT.sub(r"\1", answer.text))
        gold_parsed = parse_gold(gold)
        pred_parsed = parse_final_answer(answer)
        if not gold_parsed or not pred_parsed:
            return 0.0
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=_math_verify_timeouts())
        return 1.0 if ok else 0.0
    except (Exception, TimeoutException):  # noqa: BLE001
        return 0.0


def canonical_math_answer(completion: str) -> str | None:
    """A canonical string of the final answer of ``completion`` (:func:`final_math_answer`, parsed by
    :func:`parse_final_answer`), or None.

    The first parsed candidate is a SymPy object (or a string when parsing failed); floats inside it
    are replaced by the rationals they spell, so ``0.5``, ``1/2`` and ``\\frac{1}{2}`` all give
    ``"1/2"``. Used to group answers for majority vote and answer entropy.
    """
    import sympy

    answer = final_math_answer(completion)
    parsed = parse_final_answer(answer) if answer is not None else []
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
