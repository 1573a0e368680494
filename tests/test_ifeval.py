"""IFEval: every covered instruction type on a passing and a failing response; loader; strict vs loose."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
    ("change_case:english_capital", {}, "THIS IS THE ANSWER.", "LE CHAT EST SUR LA TABLE ET IL NE VEUT PAS PARTIR."),
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
