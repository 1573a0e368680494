"""IFEval: every instruction type on a passing and a failing response; loader; strict vs loose; language
identification; parity with lm-eval's checkers (tests/fixtures/ifeval_lm_eval_parity.json); the checker option."""

import collections
import json
import logging
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tms.data.tasks import ifeval_checks
from tms.data.tasks.ifeval import IFEvalTask
from tms.data.tasks.ifeval_checks import (
    CHECKS,
    check_instructions,
    count_words,
    detect_language,
    follows,
    split_into_sentences,
)

CASES = [  # (instruction id, kwargs, passing response, failing response)
    ("keywords:existence", {"keywords": ["banana", "apple"]}, "I like Apple and BANANA.", "I like apples only."),
    (
        "keywords:frequency",
        {"keyword": "cat", "frequency": 2, "relation": "at least"},
        "A cat and a cat.",
        "A cat and a dog.",
    ),
    (
        "keywords:frequency",
        {"keyword": "cat", "frequency": 2, "relation": "less than"},
        "A cat and a dog.",
        "A cat and a cat.",
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["red", "blue"]},
        "The sky is azure, reddish at dusk.",
        "The sky is Blue.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
        "Zebras zigzag lazily.",
        "No such letter.",
    ),
    (
        "language:response_language",
        {"language": "es"},
        "El perro es muy grande y la casa está en el centro.",
        "The dog is very big and the house is in the center.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "One. Two.",
        "One. Two. Three. Four.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "First part.\n***\nSecond part.",
        "Only one paragraph.",
    ),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", "one two"),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        "Intro text.\n\nHowever, this is the second.",
        "Intro text.\n\nBut this is the second.",
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], you live at [address].",
        "Dear [name].",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Hello.\nP.S. See you soon.",
        "Hello. See you soon.",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        "Hi.\nP.P.S. One more thing.",
        "Hi.\nP.S. One thing.",
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n- three"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* only"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nfoo\nSection 2\nbar",
        "Section 1\nfoo",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "a: 1"),
    ("detectable_format:title", {}, "<<My Title>>\nSome text.", "My Title\nSome text."),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Answer one.\n******\nAnswer one."),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem."},
        "Write a poem. Roses are red.",
        "Roses are red.",
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Done. Any other questions?",
        "Any other questions? Done.",
    ),
    ("startend:quotation", {}, '"Hello world"', 'Hello "world"'),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "This is VERY IMPORTANT news.",
        "This is Very important news.",
    ),
    ("change_case:english_capital", {}, "THIS IS THE ANSWER.", "This is the answer."),
    ("change_case:english_capital", {}, "THIS IS THE ANSWER.", "DER HUND IST NICHT GROSS UND DIE KATZE AUCH NICHT."),
    ("change_case:english_lowercase", {}, "this is the answer.", "This is the answer."),
    ("punctuation:no_comma", {}, "No commas here.", "Well, here is one."),
]


def test_every_official_instruction_type_is_covered():
    assert len(CHECKS) == 25
    assert {case[0] for case in CASES} == set(CHECKS)


@pytest.mark.parametrize("instruction_id, kwargs, passing, failing", CASES)
def test_instruction_check_pass_and_fail(instruction_id, kwargs, passing, failing):
    assert follows(instruction_id, passing, kwargs) is True
    assert follows(instruction_id, failing, kwargs) is False


def test_empty_response_follows_nothing_and_none_kwargs_are_ignored():
    assert follows("punctuation:no_comma", "   ", {}) is False
    assert follows(
        "length_constraints:number_words", "one two three", {"num_words": 3, "relation": "at least", "keyword": None}
    )


@pytest.mark.parametrize(
    "instruction_id, kwargs, response",
    [
        ("detectable_format:json_format", {}, 'Sure, here is the JSON:\n{"a": 1}'),
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Bye. **Any other questions?**"),
        ("detectable_format:title", {}, "Here you go!\n<<Title>>"),  # passes strictly too
    ],
)
def test_loose_grading_forgives_a_preamble_line_and_markdown(instruction_id, kwargs, response):
    strict = check_instructions(response, [instruction_id], [kwargs])
    loose = check_instructions(response, [instruction_id], [kwargs], loose=True)
    assert loose == [True]
    assert strict == [instruction_id == "detectable_format:title"]


def test_unknown_instruction_scores_zero_and_warns_once(caplog):
    with caplog.at_level(logging.WARNING):
        assert follows("future:new_instruction", "anything", {}) is False
        assert check_instructions("anything", ["future:new_instruction"], [{}], loose=True) == [False]
    assert caplog.text.count("future:new_instruction") == 1


def test_sentence_and_word_counting():
    assert split_into_sentences("Dr. Smith arrived. He sat down! Was it 3.5 p.m.? Yes.") == [
        "Dr. Smith arrived.",
        "He sat down!",
        "Was it 3.5 p.m.?",
        "Yes.",
    ]
    assert count_words("Hello, world -- it's 2024!") == 5


@pytest.mark.parametrize(
    "text, language",
    [
        ("The weather is nice and the sun is out.", "en"),
        ("Der Hund ist nicht groß und die Katze auch nicht.", "de"),
        ("Tôi là người Việt Nam và tôi yêu đất nước của tôi.", "vi"),
        ("यह एक अच्छी किताब है और मुझे पसंद है।", "hi"),
        ("Привіт, як справи? Це мій дім.", "uk"),
        ("یہ میری کتاب ہے اور مجھے پسند ہے۔", "ur"),
        ("こんにちは、元気ですか？", "ja"),
        ("12345 !!!", None),
    ],
)
def test_detect_language(text, language):
    assert detect_language(text) == language


IFEVAL_ROWS = [
    {
        "key": 1000,
        "prompt": "Write a short note without commas. Wrap it in double quotes.",
        "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
        "kwargs": [{}, {}],
    },
    {
        "key": 1001,
        "prompt": "Write at least 5 words and end with 'Is there anything else I can help with?'",
        "instruction_id_list": ["length_constraints:number_words", "startend:end_checker"],
        "kwargs": [{"num_words": 5, "relation": "at least"}, {"end_phrase": "Is there anything else I can help with?"}],
    },
]


def test_ifeval_loader_strips_none_kwargs_from_parquet(tmp_path):
    path = tmp_path / "ifeval.parquet"
    pq.write_table(pa.Table.from_pylist(IFEVAL_ROWS), path)  # one struct type: missing keys become None
    assert pq.read_table(path).to_pylist()[0]["kwargs"][0]["num_words"] is None
    task = IFEvalTask(test_source=str(path))
    first, second = task.examples("test")
    assert (first.id, second.id) == ("1000", "1001")
    assert first.prompt == IFEVAL_ROWS[0]["prompt"] and first.reference == ""
    assert first.answer == {"instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]}
    assert second.answer["kwargs"][0] == {"num_words": 5, "relation": "at least"}
    assert task.verify('"A short note for you"', first.answer) == 1.0
    assert task.verify('"A short, note"', first.answer) == 0.0
    metrics = task.metrics("Here are five words. **Is there anything else I can help with?**", second.answer)
    assert metrics["inst_level_strict_acc"] == [True, False] and metrics["prompt_level_strict_acc"] == 0.0
    assert metrics["inst_level_loose_acc"] == [True, True] and metrics["prompt_level_loose_acc"] == 1.0


def test_ifeval_loader_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in IFEVAL_ROWS[0].items() if k != "kwargs"}]), bad)
    with pytest.raises(ValueError, match=r"(?s)bad\.parquet.*kwargs"):
        IFEvalTask(test_source=str(bad)).examples("test")
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(json.dumps({**IFEVAL_ROWS[1], "kwargs": [{"num_words": 5, "relation": "at least"}]}) + "\n")
    with pytest.raises(ValueError, match="2 instruction ids but 1 kwargs"):
        IFEvalTask(test_source=str(uneven)).examples("test")


def test_ifeval_train_split_takes_teacher_completions(tmp_path):
    source = tmp_path / "ifeval.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in IFEVAL_ROWS))
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text(
        '{"id": "1000", "completion": "\\"A note\\""}\n{"id": "1001", "completion": "Five words here, friend."}\n'
    )
    task = IFEvalTask(train_source=str(source), test_source=str(source), teacher_completions=str(teacher))
    assert [e.reference for e in task.examples("train")] == ['"A note"', "Five words here, friend."]
    assert [e.reference for e in task.examples("test")] == ["", ""]


# -- language identification ------------------------------------------------------------------
def test_language_checks_use_langdetect_exactly_as_lm_eval():
    langdetect = pytest.importorskip("langdetect")
    from tms.data.tasks.ifeval_checks import seeded_langdetect

    assert seeded_langdetect() is langdetect and langdetect.DetectorFactory.seed == 0
    # LangDetectException ("No features in text") counts as followed, as in lm-eval's checkers
    assert follows("language:response_language", "1234 5678 !!!", {"language": "fr"}) is True
    # langdetect reads upper-case French as English: the official verdict, kept
    assert langdetect.detect("LE CHAT EST SUR LA TABLE ET IL NE VEUT PAS PARTIR.") == "en"
    assert follows("change_case:english_capital", "LE CHAT EST SUR LA TABLE ET IL NE VEUT PAS PARTIR.") is True
    assert follows("change_case:english_capital", "2024 !!!") is False  # not isupper(): langdetect is never asked
    text = "Wonderful sunny weather today; children playing outside, happy families walking dogs everywhere."
    assert [follows("language:response_language", text, {"language": "en"}) for _ in range(3)] == [True] * 3


def test_without_langdetect_an_undecided_language_is_not_followed(monkeypatch, caplog):
    monkeypatch.setattr(ifeval_checks, "seeded_langdetect", lambda: None)
    monkeypatch.setattr(ifeval_checks, "_WARNED", set())
    undecided = "Wonderful sunny weather today; children playing outside, happy families walking dogs everywhere."
    assert detect_language(undecided) is None
    with caplog.at_level(logging.WARNING):
        assert follows("language:response_language", undecided, {"language": "en"}) is False
        assert follows("change_case:english_lowercase", undecided.lower()) is False
        assert follows("language:response_language", "El perro es muy grande y la casa está en el centro.",
                       {"language": "es"}) is True
        assert follows("language:response_language", "1234 !!!", {"language": "fr"}) is True  # no letters at all
    assert caplog.text.count("langdetect is not installed") == 1


# -- parity with lm-eval's checkers (tests/fixtures/ifeval_lm_eval_parity.json) ---------------
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "ifeval_lm_eval_parity.json").read_text())
REFERENCE = [c for c in FIXTURE["cases"] if c["strict"] is not None]
LANGUAGE_IDS = {"language:response_language", "change_case:english_capital", "change_case:english_lowercase"}


def agreement(cases):
    """Offline vs fixture, per instruction id: {id: (agreeing, total)}, and the disagreeing cases."""
    table, wrong = collections.defaultdict(lambda: [0, 0]), []
    for c in cases:
        got = tuple(check_instructions(c["response"], [c["instruction_id"]], [c["kwargs"]], loose=loose)[0]
                    for loose in (False, True))
        row = table[c["instruction_id"]]
        row[1] += 1
        if got == (c["strict"], c["loose"]):
            row[0] += 1
        else:
            wrong.append((c["id"], (c["strict"], c["loose"]), got))
    return dict(table), wrong


def report(title, table):
    agree, total = sum(a for a, _ in table.values()), sum(t for _, t in table.values())
    lines = [f"{title}: {agree}/{total} cases agree ({100 * agree / total:.1f}%)"]
    lines += [f"  {iid:48s} {a}/{t}" for iid, (a, t) in sorted(table.items())]
    print("\n".join(lines))
    return "\n".join(lines)


def test_the_fixture_covers_all_25_instructions_and_only_sentence_counts_lack_a_verdict():
    assert len(FIXTURE["cases"]) >= 60 and len({c["id"] for c in FIXTURE["cases"]}) == len(FIXTURE["cases"])
    assert {c["instruction_id"] for c in REFERENCE} == set(CHECKS)
    assert {c["reference"] for c in REFERENCE} <= {"lm_eval", "lm_eval/preserve_line", "bound"}
    missing = {c["instruction_id"] for c in FIXTURE["cases"] if c["strict"] is None}
    assert missing <= {"length_constraints:number_sentences"}  # needs punkt_tab; see the fixture's "derived"
    if missing:
        assert not FIXTURE["reference"]["punkt_tab"] and "length_constraints:number_sentences" in FIXTURE["derived"]


def test_offline_checks_agree_with_lm_eval_on_every_fixture_case():
    pytest.importorskip("langdetect")  # without it, the next test
    table, wrong = agreement(REFERENCE)
    text = report("offline (langdetect) vs lm-eval", table)
    assert not wrong, f"{text}\ndisagreements (id, lm-eval strict/loose, offline strict/loose): {wrong}"


def test_without_langdetect_the_fallback_agrees_except_where_it_cannot_tell(monkeypatch):
    """The heuristic only ever errs towards "not followed" (it never passes what lm-eval fails), and every
    instruction that does not identify a language agrees with lm-eval."""
    monkeypatch.setattr(ifeval_checks, "seeded_langdetect", lambda: None)
    table, wrong = agreement(REFERENCE)
    text = report("offline (heuristic, no langdetect) vs lm-eval", table)
    assert all(a == t for iid, (a, t) in table.items() if iid not in LANGUAGE_IDS), text
    inflated = [w for w in wrong if any(got and not want for got, want in zip(w[2], w[1]))]
    assert not inflated, f"{text}\nthe fallback passes what lm-eval fails: {inflated}"
    assert sum(a for iid, (a, t) in table.items() if iid in LANGUAGE_IDS) >= 0.8 * sum(
        t for iid, (a, t) in table.items() if iid in LANGUAGE_IDS), text


def test_word_tokens_is_nltks_treebank_tokenizer():
    pytest.importorskip("nltk")
    from nltk.tokenize import NLTKWordTokenizer

    from tms.data.tasks.ifeval_checks import loose_variants, word_tokens

    rng = random.Random(0)
    alphabet = "aB .,:;'\"!?()[]{}<>-*`«»“”‘’„—–09\n@#$%&/_"
    texts = [v for c in FIXTURE["cases"] for v in loose_variants(c["response"])]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    texts += ["YOU CANNOT, GONNA wanna go", "'TIS TRUE 'twas", "D'ye more'n HE'LL SHE'D", "x -- y...z"]
    treebank = NLTKWordTokenizer()
    assert [t for t in texts if word_tokens(t) != treebank.tokenize(t)] == []


# -- lm-eval's own checkers -------------------------------------------------------------------
@pytest.fixture
def lm_eval_checkers(monkeypatch):
    """lm-eval's IFEval modules loaded as if punkt_tab were installed; nltk.download refused (no network)."""
    from tms.data.tasks import ifeval_reference

    if ifeval_reference.lm_eval_unavailable(require_punkt=False):
        pytest.skip(ifeval_reference.lm_eval_unavailable(require_punkt=False))
    import nltk

    asked = []
    monkeypatch.setattr(nltk, "download", lambda *a, **k: asked.append(a) or False)
    monkeypatch.setattr(ifeval_reference, "lm_eval_unavailable", lambda require_punkt=True: None)
    ifeval_reference.lm_eval_ifeval.cache_clear()
    before = {name for name in sys.modules if name.startswith("lm_eval.tasks.ifeval")}
    yield ifeval_reference
    ifeval_reference.lm_eval_ifeval.cache_clear()
    assert {name for name in sys.modules if name.startswith("lm_eval.tasks.ifeval")} == before


def test_lm_eval_checker_reproduces_the_fixture_and_drives_the_task(lm_eval_checkers, tmp_path):
    from tms.data.tasks.ifeval_reference import check_instructions_lm_eval

    punkt = FIXTURE["reference"]["punkt_tab"]
    cases = [c for c in REFERENCE if c["reference"] == "lm_eval" or punkt]
    assert len(cases) >= 90
    for c in cases:
        got = tuple(check_instructions_lm_eval(c["response"], [c["instruction_id"]], [c["kwargs"]], loose=loose)[0]
                    for loose in (False, True))
        assert got == (c["strict"], c["loose"]), c["id"]
    assert check_instructions_lm_eval("anything", ["future:new_instruction"], [{}]) == [False]
    source = tmp_path / "ifeval.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in IFEVAL_ROWS))
    task = IFEvalTask(test_source=str(source), checker="lm_eval")
    assert task.checker == "lm_eval" and IFEvalTask(test_source=str(source)).checker == "lm_eval"  # auto
    offline = IFEvalTask(test_source=str(source), checker="offline")
    first, second = task.examples("test")
    for completion in ('"A short note for you"', '"A short, note"', "Here are five words. **Is there anything "
                       "else I can help with?**", ""):
        for answer in (first.answer, second.answer):
            assert task.metrics(completion, answer) == offline.metrics(completion, answer)
    assert task.verify('"A short, note"', first.answer) == 0.0 and task.verify('"A note"', first.answer) == 1.0


def test_checker_option_is_checked_and_auto_falls_back_offline(monkeypatch):
    from tms.data.tasks import ifeval_reference

    with pytest.raises(ValueError, match=r"checker must be one of .*'official'"):
        IFEvalTask(checker="official")
    monkeypatch.setattr(ifeval_reference, "lm_eval_unavailable", lambda require_punkt=True: "not installed: lm_eval")
    with pytest.raises(ImportError, match=r"checker='lm_eval'.*not installed: lm_eval"):
        IFEvalTask(checker="lm_eval")
    assert IFEvalTask().checker == "offline" and IFEvalTask(checker="offline").checker == "offline"
    ifeval_reference.lm_eval_ifeval.cache_clear()
    with pytest.raises(ImportError, match="not installed: lm_eval"):
        ifeval_reference.check_instructions_lm_eval("x", ["punctuation:no_comma"], [{}])


def test_lm_eval_needs_punkt_tab_and_never_downloads_it(monkeypatch):
    """Where punkt_tab is missing, lm-eval's checkers are reported unavailable (and auto grades offline)."""
    from tms.data.tasks import ifeval_reference

    if ifeval_reference.lm_eval_unavailable(require_punkt=False):
        pytest.skip(ifeval_reference.lm_eval_unavailable(require_punkt=False))
    import nltk

    try:
        nltk.data.find(ifeval_reference.PUNKT)
        pytest.skip("punkt_tab is installed here")
    except LookupError:
        pass
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("tms asked nltk to download data"))
    assert "punkt_tab" in ifeval_reference.lm_eval_unavailable()
    assert IFEvalTask().checker == "offline"


def test_the_eval_stage_key_records_who_graded_ifeval(smoke_cache, monkeypatch):
    """A score graded by the offline checks without langdetect is not reused where langdetect is installed."""
    from tests.conftest import compose
    from tms.stages import evaluation as ev

    class Keyed(Exception):
        pass

    keys = []

    def stage(cfg, kind, key):
        keys.append(key)
        raise Keyed

    monkeypatch.setattr(ev, "stage", stage)
    cfg = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "+eval.benchmarks.ifeval={_target_: "
                   "tms.data.tasks.ifeval.IFEvalTask, checker: offline}"])
    from tms.stages.common import ModelRef

    ref = ModelRef("/nowhere", {"x": 1})
    for available in (True, False):
        monkeypatch.setattr(ifeval_checks, "seeded_langdetect", lambda a=available: object() if a else None)
        monkeypatch.setattr("tms.data.tasks.ifeval.seeded_langdetect", ifeval_checks.seeded_langdetect)
        with pytest.raises(Keyed):
            ev.run_eval(cfg, ref, ref)
    assert keys[0]["graders"] == {"ifeval": {"checker": "offline", "langdetect": True}}
    assert keys[1]["graders"] == {"ifeval": {"checker": "offline", "langdetect": False}}
    toy = compose(["experiment=smoke", f"cache_dir={smoke_cache}"])
    with pytest.raises(Keyed):
        ev.run_eval(toy, ref, ref)
    assert "graders" not in keys[2]  # no IFEval: the keys every cached toy evaluation has
