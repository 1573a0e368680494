"""Harvest: shard layout, resume without duplicates or gaps, determinism from the seed."""
import pytest

from tms.data.buffer import read_buffer, shard_plan
from tms.data.formatting import prompt_ids
from tms.generation.base import Completion, SamplingParams
from tms.generation.hf import HFGenerator
from tms.generation.harvest import check_complete, harvest_checkpoint
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
    for _, _, _, num_tokens, finish_reason, _ in table_rows(tmp_path / "a"):  # the real HF backend's rows
        assert 1 <= num_tokens <= 12 and finish_reason in ("stop", "length")
        assert finish_reason == "stop" or num_tokens == 12


class ScriptedGenerator:
    """A :class:`~tms.generation.base.Generator` with known answers: sample j of training example i (looked up from
    its prompt ids) is the reference solution when ``correct(i, j)``, else a wrong final answer. It records every
    request and returns completions ordered by (prompt, sample), as the protocol says."""

    def __init__(self, examples, prompts):
        self.by_prompt = {tuple(p): (i, e) for i, (e, p) in enumerate(zip(examples, prompts))}
        assert len(self.by_prompt) == len(examples)
        self.calls = []

    @staticmethod
    def correct(i, j):
        return i % 2 == 0 if j == 0 else i % 3 == 0

    @staticmethod
    def text(i, j, example):
        return example.reference if ScriptedGenerator.correct(i, j) else f"so the answer is {int(example.answer) + 1}"

    @staticmethod
    def num_tokens(i, j):
        return 1 + (3 * i + j) % 5

    def generate(self, prompts, n, sampling, seed):
        self.calls.append(([self.by_prompt[tuple(p)][0] for p in prompts], n, seed))
        out = []
        for pi, p in enumerate(prompts):
            i, e = self.by_prompt[tuple(p)]
            for j in range(n):
                out.append(Completion(prompt_index=pi, sample_index=j, text=self.text(i, j, e),
                                      token_ids=list(range(self.num_tokens(i, j))),
                                      finish_reason="stop" if j == 0 else "length"))
        return out

    def close(self):
        pass


def test_rows_hold_the_scripted_completions_scores_and_ids(setup, tmp_path):
    """Every column of the buffer against the script: the score is 1 exactly for the (example, sample) pairs the
    script answered correctly, and each row carries its own example's id and prompt, across shard boundaries."""
    task, hf, examples, prompts = setup
    gen = ScriptedGenerator(examples, prompts)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12)
    info = harvest_checkpoint(lambda: gen, task, examples, prompts, tmp_path, t=3, step=30, sampling=sampling, k=2,
                              seed=0, shard_size=7, progress=False)
    assert info["completions"] == 80 and info["tokens"] == sum(ScriptedGenerator.num_tokens(i, j)
                                                              for i in range(40) for j in range(2))
    assert [c[0] for c in gen.calls] == [list(range(lo, min(lo + 7, 40))) for lo in range(0, 40, 7)]  # shard prompts
    assert all(c[1] == 2 for c in gen.calls) and len({c[2] for c in gen.calls}) == len(gen.calls)  # k; a seed each
    want = []
    for i, e in enumerate(examples):
        assert e.id == f"sum-train-{i:05d}"  # the ids the task promises, by position
        for j in range(2):
            want.append({"example_id": f"sum-train-{i:05d}", "prompt": e.prompt, "t": 3, "step": 30, "sample_index": j,
                         "completion": ScriptedGenerator.text(i, j, e),
                         "num_tokens": ScriptedGenerator.num_tokens(i, j),
                         "finish_reason": "stop" if j == 0 else "length",
                         "score": 1.0 if ScriptedGenerator.correct(i, j) else 0.0})
    got = read_buffer(tmp_path, [3]).to_pylist()
    assert [{k: r[k] for k in want[0]} for r in got] == want
    for n, row in enumerate(got):  # the prompt text is the one inside the token ids the generator answered
        assert row["prompt"] in hf.tokenizer.decode(prompts[n // 2])
    assert sum(r["score"] for r in want) == 20 + 14  # 20 even i (sample 0), 14 multiples of 3 (sample 1)
    assert check_complete(tmp_path, 3, [e.id for e in examples], 2)["mean_score"] == pytest.approx(34 / 80)


def test_check_complete_detects_missing_rows(setup, tmp_path):
    _, gen, examples, _ = setup
    run(setup, tmp_path / "a", lambda: Keep(gen), k=1)
    (tmp_path / "a" / "t=003" / "shard-00001.parquet").unlink()
    with pytest.raises(RuntimeError, match="missing"):
        check_complete(tmp_path / "a", 3, [e.id for e in examples], 1)
