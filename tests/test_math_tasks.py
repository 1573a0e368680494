"""GSM8K / MATH / MATH-500 loaders on small local files in each dataset's real schema."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tms.data.tasks.math_tasks import GSM8KTask, MATH500Task, MATHTask

GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    },
    {
        "question": "A shop sells 125 boxes a day for 10 days. How many boxes does it sell?",
        "answer": "It sells 125*10 = <<125*10=1250>>1,250 boxes.\n#### 1,250",
    },
    {
        "question": "Tom has 3 apples and eats 5. How many are left, as a signed number?",
        "answer": "3-5 = <<3-5=-2>>-2\n#### -2",
    },
]

MATH_ROWS = [
    {
        "problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "We add: $\\frac{1}{4}+\\frac{1}{4}=\\frac{2}{4}=\\boxed{\\frac{1}{2}}$.",
    },
    {
        "problem": "Simplify $\\sqrt{18}$.",
        "level": "Level 2",
        "type": "Algebra",
        "solution": "First $\\boxed{9}$ is a square factor, so $\\sqrt{18}=\\boxed{3\\sqrt{2}}$.",
    },
    {
        "problem": "Which option? (A) 1 (B) 2 (C) 3",
        "level": "Level 3",
        "type": "Counting & Probability",
        "solution": "The answer is $\\boxed{\\text{(C)}}$.",
    },
    {
        "problem": "What is $2+3$?",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "It is $\\boxed 5$.",
    },
    {
        "problem": "Find the set of roots of $x^2-3x+2$.",
        "level": "Level 3",
        "type": "Algebra",
        "solution": "It factors as $(x-1)(x-2)$, so the roots are $\\boxed{\\{1, 2\\}}$.",
    },
]

MATH500_ROWS = [
    {
        "problem": f"Compute ${i}+{i}$.",
        "solution": f"We have ${i}+{i}=\\boxed{{{2 * i}}}$.",
        "answer": str(2 * i),
        "subject": "Prealgebra",
        "level": 1 + i % 5,
        "unique_id": f"test/prealgebra/{i}.json",
    }
    for i in range(8)
]


def write(rows: list[dict], path: Path) -> str:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(params=["jsonl", "parquet"])
def ext(request) -> str:
    return request.param


def all_splits(task):
    return {s: task.examples(s) for s in ("train", "val", "test")}


# -- GSM8K ----------------------------------------------------------------------------------------
def test_gsm8k_gold_reference_and_ids(tmp_path, ext):
    src = write(GSM8K_ROWS, tmp_path / f"gsm8k.{ext}")
    task = GSM8KTask(train_source=src, test_source=src, n_val=1)
    test = task.examples("test")
    assert [e.answer for e in test] == ["72", "10", "1250", "-2"]
    assert [e.id for e in test] == [f"gsm8k-test-00000{i}" for i in range(4)]
    first = test[0]
    assert first.reference == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is \\boxed{72}."
    )
    assert GSM8K_ROWS[0]["question"] in first.prompt and "\\boxed{}" in first.prompt
    for ex in test:
        assert "<<" not in ex.reference and "####" not in ex.reference
        assert task.verify(ex.reference, ex.answer) == 1.0
    assert task.verify("so the answer is \\boxed{71}", "72") == 0.0
    assert task.extract_answer(first.reference) == "72"


def test_gsm8k_val_is_carved_from_end_of_train(tmp_path, ext):
    src = write(GSM8K_ROWS, tmp_path / f"train.{ext}")
    task = GSM8KTask(train_source=src, test_source=src, n_val=1)
    splits = all_splits(task)
    assert [e.answer for e in splits["train"]] == ["72", "10", "1250"]
    assert [e.answer for e in splits["val"]] == ["-2"]
    assert [e.id for e in splits["val"]] == ["gsm8k-val-000003"]
    assert not {e.prompt for e in splits["train"]} & {e.prompt for e in splits["val"]}
    limited = GSM8KTask(train_source=src, test_source=src, n_val=1, limit_train=2, limit_test=1)
    assert [e.answer for e in limited.examples("train")] == ["72", "10"]
    assert [e.answer for e in limited.examples("val")] == ["-2"]
    assert len(limited.examples("test")) == 1


def test_gsm8k_directory_source(tmp_path):
    write(GSM8K_ROWS[:3], tmp_path / "train.jsonl")
    write(GSM8K_ROWS[3:], tmp_path / "test.jsonl")
    task = GSM8KTask(train_source=str(tmp_path), test_source=str(tmp_path), n_val=1)
    assert [e.answer for e in task.examples("test")] == ["-2"]
    assert [e.answer for e in task.examples("train")] == ["72", "10"]


def test_gsm8k_missing_field_names_field_and_file(tmp_path, ext):
    rows = [{"question": r["question"], "solution": r["answer"]} for r in GSM8K_ROWS]
    src = write(rows, tmp_path / f"bad.{ext}")
    with pytest.raises(ValueError) as err:
        GSM8KTask(train_source=src, test_source=src, n_val=1).examples("test")
    assert "answer" in str(err.value) and src in str(err.value)


def test_n_val_must_leave_training_rows(tmp_path):
    src = write(GSM8K_ROWS, tmp_path / "gsm8k.jsonl")
    with pytest.raises(ValueError, match="n_val=4"):
        GSM8KTask(train_source=src, test_source=src, n_val=4).examples("train")


def test_hub_defaults():
    assert (GSM8KTask().train_source, GSM8KTask().config_name) == ("openai/gsm8k", "main")
    assert MATHTask().test_source == "DigitalLearningGmbH/MATH-lighteval"
    assert (MATH500Task().test_source, MATH500Task().n_val) == ("HuggingFaceH4/MATH-500", 50)


# -- MATH -----------------------------------------------------------------------------------------
def test_math_gold_is_last_boxed(tmp_path, ext):
    src = write(MATH_ROWS, tmp_path / f"math.{ext}")
    task = MATHTask(train_source=src, test_source=src, n_val=2)
    test = task.examples("test")
    assert [e.answer for e in test] == ["\\frac{1}{2}", "3\\sqrt{2}", "\\text{(C)}", "5", "\\{1, 2\\}"]
    assert test[0].reference == MATH_ROWS[0]["solution"]
    assert test[2].meta == {"level": "Level 3", "type": "Counting & Probability"}
    assert len({e.id for e in test}) == len(test)
    assert task.verify("so it is \\boxed{0.5}", test[0].answer) == 1.0
    assert task.verify("so it is \\boxed{\\sqrt{18}}", test[1].answer) == 1.0
    assert task.verify("so it is \\boxed{9}", test[1].answer) == 0.0
    splits = all_splits(task)
    assert [e.id for e in splits["val"]] == ["math-val-000003", "math-val-000004"]
    assert [e.id for e in splits["train"]] == ["math-train-000000", "math-train-000001", "math-train-000002"]


def test_math_row_without_boxed_is_skipped(tmp_path, caplog):
    rows = MATH_ROWS + [{"problem": "p", "level": "Level 1", "type": "Algebra", "solution": "no box"}]
    src = write(rows, tmp_path / "math.jsonl")
    test = MATHTask(train_source=src, test_source=src, n_val=1).examples("test")
    assert len(test) == len(MATH_ROWS)
    assert "row 5 has no gold answer" in caplog.text


def test_math_missing_field(tmp_path, ext):
    rows = [{k: v for k, v in r.items() if k != "solution"} for r in MATH_ROWS]
    src = write(rows, tmp_path / f"math.{ext}")
    with pytest.raises(ValueError) as err:
        MATHTask(train_source=src, test_source=src).examples("test")
    assert "solution" in str(err.value) and src in str(err.value)


# -- MATH-500 -------------------------------------------------------------------------------------
def test_math500_splits_carved_from_test(tmp_path, ext):
    src = write(MATH500_ROWS, tmp_path / f"test.{ext}")
    task = MATH500Task(train_source=src, test_source=src, n_val=3)
    splits = all_splits(task)
    assert [e.answer for e in splits["test"]] == [str(2 * i) for i in range(8)]
    assert [e.answer for e in splits["train"]] == ["0", "2", "4", "6", "8"]
    assert [e.answer for e in splits["val"]] == ["10", "12", "14"]
    assert not {e.prompt for e in splits["train"]} & {e.prompt for e in splits["val"]}
    assert splits["test"][3].meta == {"subject": "Prealgebra", "level": 4, "unique_id": "test/prealgebra/3.json"}
    assert all(task.verify(e.reference, e.answer) == 1.0 for e in splits["test"])
    assert task.verify("\\boxed{15}", "14") == 0.0


def test_math500_missing_field(tmp_path, ext):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in MATH500_ROWS]
    src = write(rows, tmp_path / f"test.{ext}")
    with pytest.raises(ValueError) as err:
        MATH500Task(test_source=src).examples("test")
    assert "answer" in str(err.value) and src in str(err.value)


# -- teacher completions --------------------------------------------------------------------------
def test_teacher_completions(tmp_path):
    src = write(GSM8K_ROWS, tmp_path / "gsm8k.jsonl")
    teacher = tmp_path / "teacher.jsonl"
    ids = [f"gsm8k-train-00000{i}" for i in range(3)]
    teacher.write_text("".join(json.dumps({"id": i, "completion": f"T{i}"}) + "\n" for i in ids))
    task = GSM8KTask(train_source=src, test_source=src, n_val=1, teacher_completions=str(teacher))
    assert [e.reference for e in task.examples("train")] == [f"T{i}" for i in ids]
    assert task.examples("val")[0].reference.endswith("\\boxed{-2}.")  # val keeps the dataset reference
    teacher.write_text(json.dumps({"id": ids[0], "completion": "T"}) + "\n")
    with pytest.raises(ValueError, match=ids[1]):
        GSM8KTask(train_source=src, test_source=src, n_val=1, teacher_completions=str(teacher)).examples("train")
