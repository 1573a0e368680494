"""Harvest: shard layout, resume without duplicates or gaps, determinism from the seed."""
import pytest

from tms.buffer import read_buffer, shard_plan
from tms.data.formatting import prompt_ids
from tms.generation.base import SamplingParams
from tms.generation.hf import HFGenerator
from tms.harvest import check_complete, harvest_checkpoint
from tms.toy.tasks import ToyTask


@pytest.fixture(scope="module")
def setup(smoke_base):
    task = ToyTask("sum", n_train=40, n_val=0, n_test=0, seed=0)
    gen = HFGenerator.from_pretrained(smoke_base, batch_size=16, device="cpu", dtype="float32")
    examples = task.examples("train")
    prompts = [prompt_ids(gen.tokenizer, task.messages(e)) for e in examples]
    return task, gen, examples, prompts


class Crash(Exception):
    pass


class CrashingGenerator:
    """Delegates to a real generator and crashes after ``ok`` shards (a killed harvest)."""

    def __init__(self, inner, ok):
        self.inner, self.ok = inner, ok

    def generate(self, prompts, n, sampling, seed):
        if self.ok == 0:
            raise Crash()
        self.ok -= 1
        return self.inner.generate(prompts, n, sampling, seed)

    def close(self):
        pass


class Keep:
    def __init__(self, inner):
        self.inner = inner

    def generate(self, *a, **k):
        return self.inner.generate(*a, **k)

    def close(self):
        pass


def run(setup, out, make, k=2, seed=0):
    task, gen, examples, prompts = setup
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12)
    return harvest_checkpoint(make, task, examples, prompts, out, t=3, step=30, sampling=sampling, k=k, seed=seed,
                              shard_size=16, progress=False)


def table_rows(out):
    t = read_buffer(out, [3])
    return list(zip(*[t.column(c).to_pylist() for c in ("example_id", "sample_index", "completion", "num_tokens", "finish_reason", "score")]))


def test_shard_plan_covers_every_prompt_once():
    assert shard_plan(40, 16) == [(0, 16), (16, 32), (32, 40)]
    assert shard_plan(0, 16) == []


def test_interrupted_harvest_resumes_without_duplicates_or_gaps(setup, tmp_path):
    task, gen, examples, _ = setup
    full = tmp_path / "full"
    run(setup, full, lambda: Keep(gen))
    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        run(setup, crashed, lambda: CrashingGenerator(gen, ok=1))
    assert len(list((crashed / "t=003").glob("shard-*.parquet"))) == 1  # only the finished shard exists
    assert not list((crashed / "t=003").glob("*.tmp"))
    info = run(setup, crashed, lambda: Keep(gen))
    assert info["resumed_shards"] == 1
    check = check_complete(crashed, 3, [e.id for e in examples], 2)
    assert check["rows"] == len(examples) * 2
    assert table_rows(crashed) == table_rows(full)  # identical to an uninterrupted harvest


def test_same_seed_same_buffer_and_other_seed_differs(setup, tmp_path):
    _, gen, _, _ = setup
    run(setup, tmp_path / "a", lambda: Keep(gen), seed=5)
    run(setup, tmp_path / "b", lambda: Keep(gen), seed=5)
    run(setup, tmp_path / "c", lambda: Keep(gen), seed=6)
    assert table_rows(tmp_path / "a") == table_rows(tmp_path / "b")
    assert [r[2] for r in table_rows(tmp_path / "a")] != [r[2] for r in table_rows(tmp_path / "c")]


def test_rows_carry_scores_and_finish_reasons(setup, tmp_path):
    task, gen, examples, _ = setup
    run(setup, tmp_path / "a", lambda: Keep(gen), k=1)
    t = read_buffer(tmp_path / "a").to_pylist()
    by_id = {e.id: e for e in examples}
    for row in t:
        assert row["t"] == 3 and row["step"] == 30
        assert row["score"] == task.verify(row["completion"], by_id[row["example_id"]].answer)
        assert row["finish_reason"] in ("stop", "length") and 1 <= row["num_tokens"] <= 12
        assert row["prompt"] == by_id[row["example_id"]].prompt


def test_check_complete_detects_missing_rows(setup, tmp_path):
    _, gen, examples, _ = setup
    run(setup, tmp_path / "a", lambda: Keep(gen), k=1)
    (tmp_path / "a" / "t=003" / "shard-00001.parquet").unlink()
    with pytest.raises(RuntimeError, match="missing"):
        check_complete(tmp_path / "a", 3, [e.id for e in examples], 1)
