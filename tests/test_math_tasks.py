"""GSM8K / MATH / MATH-500 loaders on small local files in each dataset's real schema."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.gsm8k_problems import GSM8K_GOLDS, GSM8K_PROBLEMS
from tms.data.tasks.math_tasks import GSM8KTask, MATH500Task, MATHTask, gsm8k_gold

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


# -- final answer of a math solution --------------------------------------------------------------
# Rule (tms.data.tasks.verify.final_math_answer): the last \boxed{...}, else the last `#### N` line, else the last
# "answer is ...", else the last number. Fixtures: tests/gsm8k_problems.py, in GSM8K's own schema.
@pytest.fixture(scope="module")
def gsm8k_task(tmp_path_factory) -> GSM8KTask:
    src = write(GSM8K_PROBLEMS, tmp_path_factory.mktemp("gsm8k") / "gsm8k.jsonl")
    return GSM8KTask(train_source=src, test_source=src, n_val=1)


@pytest.fixture(scope="module")
def gsm8k_test(gsm8k_task) -> list:
    return gsm8k_task.examples("test")


def rationale(example) -> str:
    """The dataset's rationale of ``example`` (calculator annotations kept), without its ``#### N`` line."""
    row = GSM8K_PROBLEMS[int(example.id.rsplit("-", 1)[1])]
    return row["answer"].rsplit("####", 1)[0].rstrip()


def chatty(example) -> str:
    """The rationale as a model writes it: "To answer this:" in front of the first calculation."""
    return "To answer this: " + rationale(example)


def plus_one(gold: str) -> str:
    return str(int(gold) + 1)


def test_gsm8k_gold_is_the_last_hash_line(gsm8k_test):
    assert [e.answer for e in gsm8k_test] == GSM8K_GOLDS
    assert gsm8k_gold("She has 3 #### 4 apples.\n#### 1,250") == "1250"
    assert gsm8k_gold("Total 5+4 = <<5+4=9>>9\n#### 9\n") == "9"
    assert gsm8k_gold("Total 5+4 = <<5+4=9>>9\n#### 9\nNote: the pens were free.") == "9"  # the line only


def test_gsm8k_row_with_empty_hash_line_is_skipped(tmp_path, caplog):
    rows = GSM8K_PROBLEMS[:2] + [{"question": "q", "answer": "3+4 = <<3+4=7>>7\n#### \n7"}]
    test = GSM8KTask(train_source=write(rows, tmp_path / "g.jsonl"), test_source=write(rows, tmp_path / "g.jsonl"),
                     n_val=1).examples("test")
    assert [e.answer for e in test] == GSM8K_GOLDS[:2]
    assert "row 2 has no gold answer" in caplog.text


def test_solution_ending_with_gold_hash_line_is_correct(gsm8k_task, gsm8k_test):
    for e in gsm8k_test:
        row = GSM8K_PROBLEMS[int(e.id.rsplit("-", 1)[1])]
        for solution in (row["answer"], f"{rationale(e)}\n#### {e.answer}", f"{chatty(e)}\n#### {e.answer}"):
            assert gsm8k_task.verify(solution, e.answer) == 1.0, solution
            assert gsm8k_task.extract_answer(solution) == gsm8k_task.extract_answer(f"\\boxed{{{e.answer}}}")


def test_solution_ending_with_wrong_hash_line_is_wrong(gsm8k_task, gsm8k_test):
    for e in gsm8k_test:
        wrong = plus_one(e.answer)
        for solution in (f"{rationale(e)}\n#### {wrong}", f"{chatty(e)}\n#### {wrong}"):
            assert gsm8k_task.verify(solution, e.answer) == 0.0, solution
            assert gsm8k_task.verify(solution, wrong) == 1.0, solution
    # an earlier "= 10%" equal to the gold 10 does not rescue a wrong final line
    for solution in (
        "To answer this, the share absent is 3/30*100 = <<3/30*100=10>>10%.\n#### 11",
        "That answers it: 4/40*100 = 10%, so the price went down by 10%.\n#### 11",
        "The answer: 4/40*100 = <<4/40*100=10>>10%.\nThen 10+1 = <<10+1=11>>11.\n#### 11",
    ):
        assert gsm8k_task.verify(solution, "10") == 0.0, solution
        assert gsm8k_task.verify(solution, "11") == 1.0, solution


def test_hash_line_beats_answer_is_either_way(gsm8k_task, gsm8k_test):
    for e in gsm8k_test:
        gold, wrong = e.answer, plus_one(e.answer)
        assert gsm8k_task.verify(f"The answer is {gold}.\n{rationale(e)}\n#### {wrong}", gold) == 0.0
        assert gsm8k_task.verify(f"The answer is {wrong}.\n{rationale(e)}\n#### {gold}", gold) == 1.0
        assert gsm8k_task.verify(f"{rationale(e)}\n#### {wrong}\nSo the answer is {gold}.", gold) == 0.0
        assert gsm8k_task.verify(f"{rationale(e)}\n#### {gold}\nSo the answer is {wrong}.", gold) == 1.0


def test_last_boxed_wins_over_earlier_boxed_and_hash_line(gsm8k_task, gsm8k_test):
    for e in gsm8k_test:
        gold, wrong = e.answer, plus_one(e.answer)
        body = rationale(e)
        assert gsm8k_task.verify(f"{body} First guess \\boxed{{{wrong}}}; checking, \\boxed{{{gold}}}.", gold) == 1.0
        assert gsm8k_task.verify(f"{body} First guess \\boxed{{{gold}}}; checking, \\boxed{{{wrong}}}.", gold) == 0.0
        assert gsm8k_task.verify(f"{body}\n#### {wrong}\nThe answer is \\boxed{{{gold}}}.", gold) == 1.0
        assert gsm8k_task.verify(f"{body}\nThe answer is \\boxed{{{wrong}}}.\n#### {gold}", gold) == 0.0
    assert gsm8k_task.extract_answer("\\boxed{5} or rather \\boxed{6}") == "6"


def test_percent_thousands_and_units_equal_the_integer_gold(gsm8k_task):
    verify = gsm8k_task.verify
    for solution in ("so \\boxed{10\\%}", "so $\\boxed{10 \\%}$.", "\\boxed{10%}", "#### 10%", "The answer is 10%.",
                     "To answer this: it drops by 4/40*100 = 10%"):
        assert verify(solution, "10") == 1.0, solution
    for solution in ("\\boxed{11\\%}", "\\boxed{100\\%}", "\\boxed{0.1}", "#### 10.5%", "The answer is 9%."):
        assert verify(solution, "10") == 0.0, solution
    for solution in ("To answer this: 617*2 = 1,234 chairs.\n#### 1,234", "\\boxed{1,234}", "#### $1,234.00",
                     "The answer is 1,234 chairs.", "To answer this, I count 1,234"):
        assert verify(solution, "1234") == 1.0, solution
    for solution in ("\\boxed{\\$92.00}", "\\boxed{\\$92}", "#### $92", "#### 92 dollars", "The answer is $92.",
                     "The final answer is $\\$92$."):
        assert verify(solution, "92") == 1.0, solution
    for solution in ("\\boxed{1,235}", "#### 1,235", "\\boxed{92.5}", "#### 92.50", "The answer is $93."):
        assert verify(solution, "1234" if "1,23" in solution else "92") == 0.0, solution


def test_last_answer_is_wins_over_earlier_numbers(gsm8k_task, gsm8k_test):
    verify = gsm8k_task.verify
    for e in gsm8k_test:
        gold, wrong = e.answer, plus_one(e.answer)
        assert verify(f"{chatty(e)}\nThe final answer is {wrong}.\nChecking again, the answer is {gold}.", gold) == 1.0
        assert verify(f"{chatty(e)}\nThe final answer is {gold}.\nChecking again, the answer is {wrong}.", gold) == 0.0
        assert verify(f"{rationale(e)}\nThe final answer is ${gold}$. I hope it is correct.", gold) == 1.0
    assert verify("The answer is 42, since 6*7 = 42 and 42 - 2 = 40.", "42") == 1.0
    assert verify("The answer is: 14 dollars, 2 more than the 12 for notebooks.", "14") == 1.0
    assert verify("Adding up, the final answer is:\n\n$$14$$\n", "14") == 1.0


def test_last_number_is_the_fallback(gsm8k_task):
    verify = gsm8k_task.verify
    assert verify("To answer this, 3/30 = 10%. Then 10+1 = 11 pupils stay home.", "11") == 1.0
    assert verify("To answer this, 3/30 = 10%. Then 10+1 = 11 pupils stay home.", "10") == 0.0
    assert verify("Lena has 5*7 = 35 stickers, so together 35+7 = 42", "42") == 1.0
    assert verify("Lena has 5*7 = 35 stickers, so together 35+7 = 42", "35") == 0.0
    assert verify("It was 4-9 = -5", "-5") == 1.0
    assert verify("I cannot tell.", "5") == 0.0
    assert gsm8k_task.extract_answer("I cannot tell.") is None
    assert gsm8k_task.extract_answer("To answer this, 3/30 = 10%. So 11 stay home.") == "11"


def test_nested_braces_inside_boxed():
    task = MATHTask()
    first, last = "\\frac{1}{2}", "\\frac{\\sqrt{3}}{2}"
    text = f"At first $\\boxed{{{first}}}$, but the angle is $60^{{\\circ}}$, so $\\boxed{{{last}}}$."
    assert task.verify(text, last) == 1.0
    assert task.verify(text, first) == 0.0
    assert task.extract_answer(text) == task.extract_answer(f"$\\boxed{{{last}}}$")
    assert task.verify("\\boxed{2} and then \\boxed{2^{10}} = 1024 {in all}", "1024") == 1.0
    assert task.verify("\\boxed{1} and then \\boxed{\\dfrac{2^{3}}{4}}", "2") == 1.0
    assert task.verify("\\boxed{3} and then \\boxed{\\{1, 2\\}}", "\\{1,2\\}") == 1.0
