"""Verifiers in tms.data.tasks.verify: answer extraction, Countdown, math-verify, exact match."""
import threading

import pytest

from tms.data.tasks.verify import (
    FinalAnswer,
    canonical_math_answer,
    countdown_verify,
    exact_match_score,
    extract_final_answer,
    final_math_answer,
    last_answer_is,
    last_boxed,
    last_hash_answer,
    last_number,
    math_verify_score,
)


def tagged(expr: str) -> str:
    return f"Let me think.\n<answer>{expr}</answer>"


# -- extraction -----------------------------------------------------------------------------------
def test_extract_last_answer_tag_wins_over_boxed():
    text = "<answer>1 + 2</answer> then \\boxed{7} and finally <answer> 3 * 4 </answer>"
    assert extract_final_answer(text) == "3 * 4"


def test_extract_last_boxed_with_nested_braces():
    text = "first \\boxed{1} then \\boxed{\\frac{1}{2}} and \\boxed{\\frac{\\sqrt{3}}{2}}."
    assert extract_final_answer(text) == "\\frac{\\sqrt{3}}{2}"


def test_extract_boxed_escaped_braces_and_unclosed_last():
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    # the last \boxed is unclosed: fall back to the last balanced one
    assert extract_final_answer("\\boxed{42} and then \\boxed{\\frac{1}{2}") == "42"


def test_extract_none_without_answer():
    assert extract_final_answer("The answer is 42.") is None
    assert extract_final_answer("<answer>unclosed") is None


# -- Countdown ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion",
    [
        tagged("(12 + 5) * 3"),
        tagged("3*(5+12)"),
        "so the answer is \\boxed{(12 + 5) * 3}",
        tagged("(12 + 5) × 3"),
        "\\boxed{(12 + 5) \\times 3}",
        tagged("((12 + 5)) * 3"),
    ],
)
def test_countdown_valid(completion):
    assert countdown_verify(completion, [12, 5, 3], 51) == 1.0


def test_countdown_unicode_division_and_minus():
    assert countdown_verify(tagged("(20 − 4) ÷ 2"), [20, 4, 2], 8) == 1.0
    assert countdown_verify("\\boxed{(20 - 4) \\div 2}", [20, 4, 2], 8) == 1.0


def test_countdown_wrong_value():
    assert countdown_verify(tagged("12 + 5 * 3"), [12, 5, 3], 51) == 0.0


def test_countdown_uses_last_answer():
    text = tagged("(12 + 5) * 3") + " wait, actually " + tagged("12 + 5 + 3")
    assert countdown_verify(text, [12, 5, 3], 51) == 0.0
    assert countdown_verify(text, [12, 5, 3], 20) == 1.0


@pytest.mark.parametrize(
    "expr, numbers, target",
    [
        ("(1 + 2", [1, 2], 3),  # unbalanced
        ("1 + 2)", [1, 2], 3),
        ("", [1, 2], 3),
        ("one plus two", [1, 2], 3),
        ("a + b", [1, 2], 3),
        ("__import__('os')", [1, 2], 3),
        ("2**3", [2, 3], 8),  # exponent
        ("2^3", [2, 3], 8),
        ("-2 + 5", [2, 5], 3),  # unary minus
        ("+2 + 1", [2, 1], 3),  # unary plus
        ("2.0 * 3", [2, 3], 6),  # float literal equal to a given number
        ("2.5 * 2", [5, 1], 5),
        ("0x2 * 3", [2, 3], 6),  # hex literal
        ("True * 5", [1, 5], 5),  # bool is not a number
        ("7 // 2", [7, 2], 3),  # floor division
        ("7 % 4", [7, 4], 3),
        ("abs(3)", [3], 3),
        ("1 + 2 = 3", [1, 2], 3),
        ("1_0 + 2", [10, 2], 12),
    ],
)
def test_countdown_malformed_scores_zero(expr, numbers, target):
    assert countdown_verify(tagged(expr), numbers, target) == 0.0


def test_countdown_number_multiset():
    assert countdown_verify(tagged("5 * 2 + 3 - 3"), [2, 3, 5], 10) == 0.0  # 3 reused
    assert countdown_verify(tagged("5 * 2"), [2, 3, 5], 10) == 0.0  # 3 missing
    assert countdown_verify(tagged("5 * 2 + 3 - 4"), [2, 3, 5], 9) == 0.0  # 4 extra
    assert countdown_verify(tagged("5 * 2"), [5, 5, 2], 10) == 0.0  # only one of two 5s
    assert countdown_verify(tagged("5 * 2 * 5"), [5, 5, 2], 50) == 1.0
    assert countdown_verify(tagged("5 * 2 * 5"), [5, 2], 50) == 0.0


def test_countdown_division_by_zero_scores_zero():
    assert countdown_verify(tagged("5 / (3 - 3)"), [5, 3, 3], 0) == 0.0
    assert countdown_verify(tagged("5 / (3 - 3) * 0"), [5, 3, 3, 0], 0) == 0.0


def test_countdown_exact_rational_intermediate():
    # 8 / (3 - 8/3) = 24 exactly; in floating point it is 23.999999999999993
    assert countdown_verify(tagged("8 / (3 - 8 / 3)"), [3, 3, 8, 8], 24) == 1.0
    assert countdown_verify(tagged("9 / (1 / 3)"), [1, 3, 9], 27) == 1.0


def test_countdown_non_integer_result_is_not_target():
    assert countdown_verify(tagged("7 / 2"), [7, 2], 3) == 0.0
    assert countdown_verify(tagged("7 / 2"), [7, 2], 4) == 0.0
    assert countdown_verify(tagged("(7 / 2) * 2"), [7, 2, 2], 7) == 1.0


def test_countdown_overlong_and_pathological_inputs_never_raise():
    padded = "(" * 130 + "1 + 2" + ")" * 130  # 265 characters: over the cap
    assert countdown_verify(tagged(padded), [1, 2], 3) == 0.0
    assert countdown_verify(tagged("((1 + 2))"), [1, 2], 3) == 1.0
    assert countdown_verify(tagged("(" * 250), [1], 1) == 0.0
    assert countdown_verify(tagged("1" + "+1" * 127), [1] * 128, 128) == 0.0  # too deep
    assert countdown_verify(None, [1], 1) == 0.0  # type: ignore[arg-type]
    assert countdown_verify(tagged("1 + 2"), ["x", 2], 3) == 0.0
    assert countdown_verify(tagged("1 + 2"), [1, 2], None) == 0.0  # type: ignore[arg-type]


# -- math-verify ----------------------------------------------------------------------------------
@pytest.mark.parametrize("completion", ["\\boxed{0.5}", "so the answer is 1/2", "We get $\\boxed{\\frac{1}{2}}$."])
@pytest.mark.parametrize("gold", ["\\frac{1}{2}", "0.5", "1/2"])
def test_math_verify_equivalent_forms(completion, gold):
    assert math_verify_score(completion, gold) == 1.0


def test_math_verify_wrong_and_missing_answers():
    assert math_verify_score("\\boxed{0.25}", "\\frac{1}{2}") == 0.0
    assert math_verify_score("so 72 and then the answer is \\boxed{73}.", "72") == 0.0
    assert math_verify_score("I cannot solve this.", "72") == 0.0
    assert math_verify_score("The total is \\boxed{72}.", "72") == 1.0
    assert math_verify_score("\\boxed{3\\sqrt{2}}", "3\\sqrt{2}") == 1.0
    assert math_verify_score("\\boxed{\\sqrt{18}}", "3\\sqrt{2}") == 1.0
    assert math_verify_score("\\boxed{2\\sqrt{3}}", "3\\sqrt{2}") == 0.0


def test_math_verify_in_worker_thread():
    results: list = []
    errors: list = []

    def work():
        try:
            results.append(math_verify_score("\\boxed{0.5}", "\\frac{1}{2}"))
            results.append(math_verify_score("\\boxed{0.25}", "\\frac{1}{2}"))
            results.append(canonical_math_answer("\\boxed{\\frac{2}{4}}"))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors
    assert results == [1.0, 0.0, "1/2"]


def test_canonical_math_answer_groups_equivalent_forms():
    forms = ["\\boxed{0.5}", "the answer is 1/2", "\\boxed{\\frac{1}{2}}", "\\boxed{\\dfrac{2}{4}}"]
    assert {canonical_math_answer(f) for f in forms} == {"1/2"}
    assert canonical_math_answer("\\boxed{0.25}") == "1/4"
    assert canonical_math_answer("no answer here") is None


# -- final answer of a math solution --------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        # 1. the last balanced \boxed{}, wherever the other rules match
        ("\\boxed{5} then \\boxed{6}", ("6", "boxed")),
        ("#### 15\nThe answer is 16.\nSo \\boxed{14}, 17", ("14", "boxed")),
        ("\\boxed{\\frac{\\sqrt{3}}{2}} and \\boxed{2^{10}} = 1024", ("2^{10}", "boxed")),
        ("\\boxed{7} and then \\boxed{\\frac{1}{2}", ("7", "boxed")),  # the unclosed last box does not count
        ("Put the answer in \\boxed{}. It is 12", ("12", "last number")),  # nor does an empty one
        # 2. the last `#### N` line
        ("The answer is 12.\n#### 13\nThat is 14 in all.", ("13", "####")),
        ("#### 12\nwait\n#### 1,250", ("1,250", "####")),
        ("#### $1,234.00", ("$1,234.00", "####")),
        ("#### 18 dollars.", ("18 dollars.", "####")),
        ("#### 10%", ("10%", "####")),
        # 3. the last "answer is ..." / "answer: ..."
        ("The final answer is 12.\nNo: the answer is 13, not 14.", ("13", "answer is")),
        ("The final answer is $42$. I hope it is correct.", ("$42$", "answer is")),
        ("Answer: 42 apples", ("42 apples", "answer is")),
        ("So the answer is:\n\n$$\n14\n$$\nDone 15.", ("$$\n14\n$$", "answer is")),
        ("The answer is $\\frac{1}{2}, \\frac{3}{4}$. Check: 5", ("$\\frac{1}{2}, \\frac{3}{4}$", "answer is")),
        ("The answer is $18, which is 3 more than $15.", ("$18", "answer is")),
        # 4. the last number (or the LaTeX math it is in)
        ("To answer this, 3/30 = 10%. So 11 stay home.", ("11", "last number")),
        ("The answer is not clear yet. 5 + 2 = 7", ("7", "last number")),
        ("It was 4-9 = -5", ("-5", "last number")),
        ("A total of 1,234 chairs", ("1,234", "last number")),
        ("So $x = \\frac{3}{4}$.", ("$x = \\frac{3}{4}$", "last number")),
        ("The roots are $x = 2$ and $x = 3$.", ("$x = 2$ and $x = 3$", "last number")),
        ("He pays $5 and gets $7 back", ("7", "last number")),  # prices are not LaTeX math
    ],
)
def test_final_math_answer_rules(text, expected):
    assert final_math_answer(text) == FinalAnswer(*expected)


def test_final_math_answer_none():
    assert final_math_answer("I cannot solve this.") is None
    assert final_math_answer(None) is None  # type: ignore[arg-type]


def test_hash_line_must_hold_a_number():
    assert last_hash_answer("#### 1. Setup\n#### Step 2\nThe answer is 42.") is None
    assert last_hash_answer("#### 41\n#### 2. Check the total") == "41"
    assert last_hash_answer("###### 5") is None
    assert final_math_answer("#### 1. Setup\nThe answer is 42.") == FinalAnswer("42", "answer is")


def test_answer_is_and_last_number_helpers():
    assert last_answer_is("The answer is 12, since 3 * 4 = 12 and not 13.") == "12"
    assert last_answer_is("The answer is **14**.") == "14"
    assert last_answer_is("The answer is that she needs more.") is None
    assert last_number("Use 2.5 miles for 6 days") == "6"
    assert last_number("no digits") is None


def test_math_verify_score_uses_the_final_answer_rule():
    assert math_verify_score("\\boxed{5} then \\boxed{6}", "6") == 1.0
    assert math_verify_score("\\boxed{5} then \\boxed{6}", "5") == 0.0
    assert math_verify_score("To answer this, 3/30 = 10%.\n#### 11", "11") == 1.0
    assert math_verify_score("To answer this, 3/30 = 10%.\n#### 11", "10") == 0.0
    assert math_verify_score("The final answer is 12.\nSo the answer is 13.", "13") == 1.0
    assert math_verify_score("The roots are $x = 2$ and $x = 3$.", "2, 3") == 1.0
    for completion in ("\\boxed{10\\%}", "#### 10%", "#### 10.0%", "The answer is 10 \\%.", "so 10%"):
        assert math_verify_score(completion, "10") == 1.0, completion
    for completion in ("\\boxed{10.5\\%}", "#### 100%", "\\boxed{0.1}"):
        assert math_verify_score(completion, "10") == 0.0, completion


def test_canonical_math_answer_uses_the_final_answer_rule():
    forms = ["\\boxed{11}", "To answer this, 3/30 = 10%.\n#### 11", "The answer is 11.", "So 10 + 1 = 11"]
    assert {canonical_math_answer(f) for f in forms} == {"11"}
    assert canonical_math_answer("\\boxed{5} or rather \\boxed{6}") == "6"


# -- exact match ----------------------------------------------------------------------------------
def test_exact_match_normalisation():
    assert exact_match_score("  Paris. ", "paris") == 1.0
    assert exact_match_score("New   York\nCity", "new york city") == 1.0
    assert exact_match_score("I think <answer>Paris</answer>", "Paris") == 1.0
    assert exact_match_score("I think <answer>Lyon</answer> not Paris", "Paris") == 0.0
    assert exact_match_score("\\boxed{B}", "b") == 1.0
    assert exact_match_score("Paris.", "paris", normalize=False) == 0.0
    assert exact_match_score("Paris", "Paris", normalize=False) == 1.0
