"""Forward KL(π_0 ‖ π) from θ0's samples, and the per-t diagnostics of a trajectory buffer (buffer.json)."""
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.conftest import compose
from tests.test_evaluation import MAX_NEW, eval_cfg, examples, slow_token_logprobs
from tms.data.buffer import SCHEMA, read_buffer, shard_path, write_shard
from tms.evaluation import buffer_stats as B
from tms.evaluation import suite
from tms.core.io import read_json, write_json


def f32(values):
    """Per-token log-probs as score_completions returns them (float32, whatever the model's dtype)."""
    return [float(np.float32(v)) for v in values]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two randomly initialised tiny Qwen2s (the smoke architecture, seeds 0 and 1) with the toy tokenizer,
    saved as HF directories: ``base`` plays θ0 and ``other`` π_θ. Their final norms are scaled (×2 for θ0, ×8
    for π_θ) so the next-token distributions are far from uniform and π_θ is much sharper than θ0: the two
    KL directions are far apart. ``world[1]``: both reloaded in float64, and the tokenizer."""
    from omegaconf import OmegaConf

    from tms.models.loading import load_model, load_tokenizer, save_pretrained
    from tms.toy.tokenizer import build_and_save
    from tms.toy.world import init_model, tokenizer_corpus

    root = tmp_path_factory.mktemp("kl_world")
    tok = build_and_save(tokenizer_corpus(0, n=40), root / "base", vocab_size=384)
    arch = OmegaConf.create(compose(["experiment=smoke"]).model.build.architecture)
    dirs = {}
    for name, seed, scale in (("base", 0, 2.0), ("other", 1, 8.0)):
        model = init_model(tok, arch, seed=seed)
        with torch.no_grad():
            model.model.norm.weight.mul_(scale)
        save_pretrained(model, tok, root / name)
        dirs[name] = str(root / name)
    tok = load_tokenizer(dirs["base"])
    models = tuple(load_model(dirs[n], dtype=torch.float64).eval() for n in ("base", "other"))
    return dirs, (*models, tok)


@pytest.fixture(scope="module")
def models(world):
    return world[1]


def test_forward_kl_is_the_kl_of_theta0_samples_computed_token_by_token(models):
    """KL(π_0 ‖ π_θ) = E_{y ~ π_0} Σ_i log π_0(y_i|x,y<i) − log π_θ(y_i|x,y<i), by hand over θ0's samples
    (k1; and k3 = Σ_i (r_i − 1) − log r_i with r_i = π_θ/π_0)."""
    from tms.generation.hf import HFGenerator

    base, theta, tok = models
    gen = HFGenerator(theta, tok, batch_size=4)
    pairs, n, seed = examples(), 2, 3
    fwd = suite.kl_from_base(gen, base, pairs, MAX_NEW, seed, n=n)
    fwd_k3 = suite.kl_from_base(gen, base, pairs, MAX_NEW, seed, n=n, estimator="k3")
    rev = suite.kl_to_base(gen, base, pairs, MAX_NEW, seed, n=n)
    # θ0's samples: θ0's own generator on the same prompts, n, seed and batch size
    prompts, comps = suite.kl_samples(HFGenerator(base, tok, batch_size=4), pairs, n, MAX_NEW, seed)
    assert len(comps) == n * sum(len(e) for _, e in pairs)
    k1, k3, tokens, per_prompt = [], [], 0, {}
    for c in comps:
        lp_base = f32(slow_token_logprobs(base, prompts[c.prompt_index], c.token_ids))
        lp_theta = f32(slow_token_logprobs(theta, prompts[c.prompt_index], c.token_ids))
        assert lp_base == pytest.approx(c.logprobs, abs=1e-6)  # the samples carry θ0's log-probs
        k1.append(sum(a - b for a, b in zip(lp_base, lp_theta)))
        k3.append(sum(math.expm1(b - a) + (a - b) for a, b in zip(lp_base, lp_theta)))
        tokens += len(c.token_ids)
        per_prompt.setdefault(c.prompt_index, []).append(k1[-1])
    assert fwd["kl_seq"] == pytest.approx(sum(k1) / len(k1), abs=1e-6)
    assert fwd["kl_token"] == pytest.approx(sum(k1) / tokens, abs=1e-6)
    means = [sum(v) / len(v) for v in per_prompt.values()]
    assert fwd["kl_seq_per_prompt"] == pytest.approx(sum(means) / len(means), abs=1e-6)
    assert fwd_k3["kl_seq"] == pytest.approx(sum(k3) / len(k3), abs=1e-6)
    # the two directions differ (a kl_from_base that sampled from π_θ would return rev): roles swapped
    assert fwd_k3["kl_seq"] > 0
    assert abs(fwd["kl_seq"] - rev["kl_seq"]) > 0.2 * max(abs(fwd["kl_seq"]), abs(rev["kl_seq"]))


def test_forward_kl_of_theta0_against_itself_is_exactly_zero(world):
    from tms.generation.hf import HFGenerator
    from tms.models.loading import load_model

    base = world[0]["base"]
    gen = HFGenerator.from_pretrained(base, batch_size=4, device="cpu")
    res = suite.kl_from_base(gen, load_model(base, dtype="float32"), examples(), MAX_NEW, seed=0, n=2)
    assert res == {"kl_seq": 0.0, "kl_token": 0.0, "kl_seq_per_prompt": 0.0}


# -- buffer diagnostics -----------------------------------------------------------------------------------
def sum_completions():
    """One completion of the toy sum target in each solution format, and the expected format names."""
    from tms.toy import skills

    xs = [12, 30, 15]
    return [skills.sum_native(xs), skills.sum_teacher(xs), "57", "the answer is fifty seven"], \
        ["native", "teacher", "direct", "other"]


def table(rows):
    cols = {f.name: [r.get(f.name) for r in rows] for f in SCHEMA}
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def row(t, i, completion, num_tokens, finish, score, k=0):
    return {"example_id": f"sum-train-{i:05d}", "prompt": f"p{i}", "t": t, "step": 10 * t, "sample_index": k,
            "completion": completion, "num_tokens": num_tokens, "finish_reason": finish, "score": score}


def test_toy_sum_task_names_its_solution_formats_and_other_tasks_none():
    from tms.toy.tasks import ToyTask

    texts, names = sum_completions()
    task = ToyTask("sum", n_train=0, n_val=0, n_test=0)
    assert [task.solution_format(c) for c in texts] == names
    assert ToyTask("add", n_train=0, n_val=0, n_test=0).solution_format(texts[0]) is None


def test_buffer_diagnostics_of_a_hand_built_table():
    from tms.toy.tasks import ToyTask

    texts, _ = sum_completions()  # native, teacher, direct, other
    rows = [row(3, 0, texts[0], 10, "stop", 1.0), row(3, 1, texts[1], 20, "length", 0.0),
            row(3, 2, texts[2], 30, "stop", 0.5), row(3, 3, texts[3], 41, "stop", None),
            row(1, 0, texts[0], 7, "length", 0.0), row(1, 1, texts[0], 9, "length", 0.25)]
    got = B.buffer_diagnostics(table(rows), ToyTask("sum", n_train=0, n_val=0, n_test=0).solution_format)
    assert got == [
        {"t": 1, "n": 2, "accuracy": 0.0, "mean_tokens": 8.0, "finished": 0.0,
         "format_share": {"direct": 0.0, "native": 1.0, "other": 0.0, "teacher": 0.0}},
        {"t": 3, "n": 4, "accuracy": 2 / 3, "mean_tokens": 25.25, "finished": 0.75,  # None score left out
         "format_share": {"direct": 0.25, "native": 0.25, "other": 0.25, "teacher": 0.25}},
    ]
    plain = [{k: v for k, v in r.items() if k != "format_share"} for r in got]
    assert B.buffer_diagnostics(table(rows)) == plain  # no format_of: no shares
    add = ToyTask("add", n_train=0, n_val=0, n_test=0)
    assert B.buffer_diagnostics(table(rows), add.solution_format) == plain  # None for everything: no shares
    assert B.buffer_diagnostics(SCHEMA.empty_table()) == []


def test_buffer_diagnostics_of_a_written_buffer_and_the_run_dir_layout(tmp_path):
    """Shards written by write_shard, listed by a pipeline.json as harvest stages by the student's t."""
    def shard(stage, t, n, correct, stop):
        rows = [row(t, i, "57" if i < correct else "x", 3 + i, "stop" if i < stop else "length", float(i < correct))
                for i in range(n)]
        write_shard(shard_path(stage, t, 0), {k: [r[k] for r in rows] for k in SCHEMA.names})

    shard(tmp_path / "h1", 2, 5, correct=2, stop=4)  # Stage 1 index 2 = the student's t = 1
    shard(tmp_path / "h2", 4, 4, correct=4, stop=1)  # Stage 1 index 4 = the student's t = 2
    got = B.buffer_diagnostics(read_buffer(tmp_path / "h1"))
    assert got == [{"t": 2, "n": 5, "accuracy": 0.4, "mean_tokens": 5.0, "finished": 0.8}]
    run = tmp_path / "run"
    harvest = {"t=1": str(tmp_path / "h1"), "t=2": str(tmp_path / "h2")}
    write_json(run / "pipeline.json", {"stages": {"harvest": harvest}})
    dirs = B.buffer_dirs_of(str(run))
    assert dirs == {1: tmp_path / "h1", 2: tmp_path / "h2"}
    assert B.buffer_dirs_of([str(tmp_path / "h2"), str(tmp_path / "h1")]) == {2: tmp_path / "h1", 4: tmp_path / "h2"}
    assert [(r["t"], r["n"], r["accuracy"], r["finished"]) for r in B.buffer_diagnostics(B.read_buffers(dirs))] \
        == [(1, 5, 0.4, 0.8), (2, 4, 1.0, 0.25)]
    with pytest.raises(ValueError, match="given twice"):
        B.buffer_dirs_of([str(run), str(tmp_path / "h1"), str(tmp_path / "h1")])
    with pytest.raises(FileNotFoundError, match="buffer_of"):
        B.buffer_dirs_of(str(tmp_path / "nowhere"))


def test_student_pld_is_reference_nll_when_the_buffer_holds_the_references(models):
    from tms.toy.tasks import ToyTask

    _, theta, tok = models
    task = ToyTask("sum", n_train=6, n_val=0, n_test=0, seed=0)
    exs = task.examples("train")
    rows = [row(1, i, e.reference, 0, "stop", 1.0) | {"example_id": e.id} for i, e in enumerate(exs)]
    other = [r | {"t": 2, "completion": "57"} for r in rows]
    got = B.student_pld(theta, tok, task, {1: table(rows), 2: other}, limit=4)
    ref = suite.reference_nll(theta, tok, task, exs[:4])
    assert got[1] == pytest.approx(ref, abs=1e-9) and got[1]["n"] == 4
    assert got[2]["pld"] != pytest.approx(ref["pld"], abs=1e-3)  # other completions, another NLL
    assert B.student_pld(theta, tok, task, {1: rows})[1] == pytest.approx(suite.reference_nll(theta, tok, task, exs))
    with pytest.raises(KeyError, match="not in task"):
        B.student_pld(theta, tok, task, {1: [rows[0] | {"example_id": "nope"}]})


def test_evaluate_buffer_of_writes_buffer_json_and_forward_kl(world, tmp_path):
    """evaluate.py buffer_of=<run dir> model_path=<student> on the smoke world (θ0 = base_dir): buffer.json with
    the diagnostics and the student's NLL per t, and results.json with kl_from_base (0 for θ0, as the helper)."""
    from hydra.utils import instantiate

    from tms.cli.evaluate import evaluate
    from tms.generation.hf import HFGenerator
    from tms.models.loading import load_model

    base_dir, student_dir = world[0]["base"], world[0]["other"]
    cfg0 = eval_cfg(tmp_path / "cache", f"model.name_or_path={base_dir}")
    task = instantiate(cfg0.data.task)
    exs = task.examples("train")[:3]
    for t, texts in ((1, [e.reference for e in exs]), (2, ["1", "2", "3"])):
        rows = [row(t, i, c, 2, "stop", float(task.verify(c, e.answer))) | {"example_id": e.id}
                for i, (e, c) in enumerate(zip(exs, texts))]
        write_shard(shard_path(tmp_path / f"h{t}", t, 0), {k: [r[k] for r in rows] for k in SCHEMA.names})
    run = tmp_path / "tms_run"
    write_json(run / "pipeline.json", {"stages": {"harvest": {f"t={t}": str(tmp_path / f"h{t}") for t in (1, 2)}}})
    cfg = eval_cfg(tmp_path / "cache", f"model.name_or_path={base_dir}", f"model_path={student_dir}", "label=student",
                   f"buffer_of={run}", "buffer_limit=2")
    res = evaluate(cfg, tmp_path / "out")
    buf = read_json(tmp_path / "out" / "buffer.json")
    assert [(r["t"], r["n"], r["accuracy"]) for r in buf["per_t"]] == [(1, 3, 1.0), (2, 3, 0.0)]
    assert buf["student"] == student_dir and buf["limit"] == 2
    student = load_model(student_dir, dtype="float32")
    tok = HFGenerator.from_pretrained(student_dir, device="cpu").tokenizer
    assert buf["per_t"][0]["student_pld"] == pytest.approx(suite.reference_nll(student, tok, task, exs[:2]))
    assert {r["t"]: r["student_pld"]["n"] for r in buf["per_t"]} == {1: 2, 2: 2}
    # results.json: the forward KL beside the reverse one, 0 for θ0, and the helper's numbers for the model
    base_row = res["rows"]["base"]
    for group in ("target", "retention"):
        assert set(res["kl_from_base"][group]) == {"kl_seq", "kl_token", "kl_seq_per_prompt"}
        assert base_row["kl_from_base"][group] == {"kl_seq": 0.0, "kl_token": 0.0, "kl_seq_per_prompt": 0.0}
        assert res["kl_from_base"][group]["kl_seq"] > 0
    e = cfg.eval
    target = instantiate(e.benchmarks[e.target])
    pairs = [(target, target.examples(e.split, e.limit)[: e.kl.limit])]
    gen = HFGenerator.from_pretrained(student_dir, batch_size=e.batch_size, device="cpu")
    helper = suite.kl_from_base(gen, load_model(base_dir), pairs, e.max_new_tokens, int(cfg.seed), n=e.kl.get("n", 1),
                                estimator=str(e.kl.get("estimator", "k1")))
    assert res["kl_from_base"]["target"] == pytest.approx(helper, abs=1e-6)
    from tms.evaluation.table import summary_table

    table_text = summary_table(res["rows"], list(e.retention), str(e.target))
    assert "fwdKL_ret/seq" in table_text.splitlines()[0]
    assert f"{res['kl_from_base']['retention']['kl_seq']:.3f}" in table_text.splitlines()[-1]
