"""CountdownTask: deterministic, disjoint, solvable-by-construction generation."""
import json
import re
from fractions import Fraction

import pytest

from tms.data.tasks.countdown import CountdownTask

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def default_task() -> CountdownTask:
    return CountdownTask()


def key(example):
    return tuple(sorted(example.answer["numbers"])), example.answer["target"]


def test_default_sizes_ids_and_answers(default_task):
    sizes = {s: len(default_task.examples(s)) for s in SPLITS}
    assert sizes == {"train": 10_000, "val": 500, "test": 1000}
    assert default_task.examples("train")[123].id == "countdown-train-000123"
    assert default_task.examples("test")[0].id == "countdown-test-000000"
    counts = {3: 0, 4: 0}
    for split in SPLITS:
        for ex in default_task.examples(split):
            numbers, target = ex.answer["numbers"], ex.answer["target"]
            assert set(ex.answer) == {"numbers", "target"}
            assert all(type(n) is int and 1 <= n <= 100 for n in numbers)
            assert type(target) is int and 1 <= target <= 100
            counts[len(numbers)] += 1
            assert str(numbers) in ex.prompt and str(target) in ex.prompt
    # num_numbers=(3, 4) is drawn uniformly per example
    assert 0.4 < counts[3] / (counts[3] + counts[4]) < 0.6


def test_every_reference_verifies(default_task):
    for split in SPLITS:
        for ex in default_task.examples(split):
            assert ex.reference.endswith("</answer>")
            assert default_task.verify(ex.reference, ex.answer) == 1.0, ex


def test_reference_steps_are_correct_arithmetic(default_task):
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    for ex in default_task.examples("val"):
        steps = re.findall(r"Step \d+: (\d+) ([-+*/]) (\d+) = (\d+)\.", ex.reference)
        assert len(steps) == len(ex.answer["numbers"]) - 1
        for a, op, b, c in steps:
            assert ops[op](Fraction(a), Fraction(b)) == int(c)
        assert int(steps[-1][3]) == ex.answer["target"]


def test_splits_are_disjoint_and_without_duplicates(default_task):
    keys = {s: [key(e) for e in default_task.examples(s)] for s in SPLITS}
    for split in SPLITS:
        assert len(set(keys[split])) == len(keys[split])
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])


def test_same_seed_identical_other_seed_different():
    a = CountdownTask(seed=7, n_train=300, n_val=20, n_test=50)
    b = CountdownTask(seed=7, n_train=300, n_val=20, n_test=50)
    c = CountdownTask(seed=8, n_train=300, n_val=20, n_test=50)
    for split in SPLITS:
        assert a.examples(split) == b.examples(split)
        same = sum(x.answer == y.answer for x, y in zip(a.examples(split), c.examples(split)))
        assert same < len(a.examples(split)) // 10


def test_test_split_does_not_depend_on_train_size():
    small = CountdownTask(seed=3, n_train=10, n_val=5, n_test=40)
    large = CountdownTask(seed=3, n_train=2000, n_val=5, n_test=40)
    assert small.examples("test") == large.examples("test")
    assert small.examples("train") == large.examples("train")[:10]


def test_configurable_sizes_and_ranges():
    task = CountdownTask(seed=1, n_train=200, n_val=0, n_test=10, num_numbers=4, max_number=20, target_range=(50, 60))
    rows = task.examples("train")
    assert len(rows) == 200 and task.examples("val") == []
    assert all(len(e.answer["numbers"]) == 4 and max(e.answer["numbers"]) <= 20 for e in rows)
    assert all(50 <= e.answer["target"] <= 60 for e in rows)
    assert all(task.verify(e.reference, e.answer) == 1.0 for e in rows)


def test_impossible_configuration_fails_clearly():
    with pytest.raises(ValueError, match="num_numbers"):
        CountdownTask(num_numbers=[1])
    task = CountdownTask(n_train=50, n_val=0, n_test=0, num_numbers=2, max_number=2, target_range=(1, 4))
    with pytest.raises(RuntimeError, match="no new instance"):
        task.examples("train")


def test_verify_and_extract_answer():
    task = CountdownTask(n_train=1, n_val=1, n_test=1)
    answer = {"numbers": [12, 5, 3], "target": 51}
    assert task.verify("<answer>(12 + 5) × 3</answer>", answer) == 1.0
    assert task.verify("<answer>12 + 5 * 3</answer>", answer) == 0.0
    assert task.verify("<answer>(12 + 5) * 3</answer>", {"numbers": [12, 5, 3]}) == 0.0  # malformed gold
    assert task.extract_answer("x <answer> (12 + 5) × 3 </answer>") == "(12+5)*3"
    assert task.extract_answer("\\boxed{(12 + 5) \\times 3}") == "(12+5)*3"
    assert task.extract_answer("no answer") is None
    assert task.extract_answer("<answer>  </answer>") is None


def test_teacher_completions_replace_train_references(tmp_path):
    task = CountdownTask(n_train=5, n_val=2, n_test=2)
    ids = [e.id for e in task.examples("train")]
    path = tmp_path / "teacher.jsonl"
    path.write_text("".join(json.dumps({"id": i, "completion": f"teacher says {i}"}) + "\n" for i in ids))
    taught = CountdownTask(n_train=5, n_val=2, n_test=2, teacher_completions=str(path))
    assert [e.reference for e in taught.examples("train")] == [f"teacher says {i}" for i in ids]
    assert taught.examples("val") == task.examples("val")  # only train is replaced
    path.write_text("".join(json.dumps({"id": i, "completion": "x"}) + "\n" for i in ids[:-1]))
    with pytest.raises(ValueError, match=ids[-1]):
        CountdownTask(n_train=5, n_val=2, n_test=2, teacher_completions=str(path)).examples("train")
