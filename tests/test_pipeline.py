"""The real config composed with overrides, run in-process: SFT, the TMS pipeline, stage reuse."""
import json

import pytest

from tests.conftest import compose
from tms.data.buffer import read_buffer
from tms.core.io import read_json


def run_pipeline(cache, run_dir, *overrides):
    from tms.pipeline import run

    cfg = compose(["experiment=smoke", f"cache_dir={cache}", *overrides])
    return cfg, run(cfg, run_dir)


def test_sft_method_saves_T_loadable_checkpoints(smoke_cache, tmp_path):
    from tms.models.loading import load_model, load_tokenizer

    cfg, res = run_pipeline(smoke_cache, tmp_path, "method=sft", "sft.num_checkpoints=4")
    ckpts = tmp_path / "checkpoints"
    index = read_json(ckpts / "trajectory.json")
    assert index["T"] == 4 and sorted(index["checkpoints"]) == ["1", "2", "3", "4"]
    steps = [index["checkpoints"][str(t)]["step"] for t in range(1, 5)]
    assert steps[-1] == index["total_steps"] and steps == sorted(set(steps))
    for t in range(1, 5):
        d = ckpts / f"t={t:02d}"
        assert (d / "config.json").is_file() and (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
        assert index["checkpoints"][str(t)]["pld"] > 0
    load_model(str(ckpts / "t=04"), dtype="float32")
    load_tokenizer(str(ckpts / "t=04"))
    metrics = (ckpts.resolve().parent / "logs" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for col in ("train/loss", "val/pld", "train/tokens_per_s", "train/lr"):
        assert col in header, col
    assert res["model"].endswith("t=04")


def test_tms_pipeline_outputs_and_reuse(smoke_cache, tmp_path):
    cfg, res = run_pipeline(smoke_cache, tmp_path / "run1")
    pipe = read_json(tmp_path / "run1" / "pipeline.json")
    T, n = cfg.sft.num_checkpoints, cfg.data.task.n_train
    # the buffer: exactly T x |prompts| x k rows, one per (t, x, k)
    tables = [read_buffer(d) for d in pipe["stages"]["harvest"].values()]
    rows = [(r["t"], r["example_id"], r["sample_index"]) for t in tables for r in t.to_pylist()]
    assert len(rows) == T * n * cfg.harvest.samples_per_prompt == len(set(rows))
    assert sorted({r[0] for r in rows}) == list(range(1, T + 1))
    counts = read_json(f"{pipe['stages']['student']}/mixture_counts.json")
    assert set(counts) == {str(e) for e in range(cfg.sft.epochs)} and sum(counts["0"].values()) == n
    assert set(counts["0"]) <= {"reference"} | {f"t={t}" for t in range(1, T + 1)}
    results = read_json(tmp_path / "run1" / "results.json")
    for key in ("scores", "target", "xfer", "retention", "forgetting", "kl_to_base", "pld", "pass_at_k", "sc_acc",
                "answer_entropy"):
        assert key in results, key
    assert set(results["rows"]) == {"base", "sft", "tms"}
    assert results["rows"]["base"]["forgetting"] == 0.0 and results["rows"]["base"]["kl_to_base"]["target"]["kl_seq"] == 0.0
    # a second invocation reuses every stage: same results, no new stage directory
    before = sorted(p.name for p in smoke_cache.glob("*/*"))
    _, res2 = run_pipeline(smoke_cache, tmp_path / "run2")
    assert sorted(p.name for p in smoke_cache.glob("*/*")) == before
    assert json.dumps(res2["rows"], sort_keys=True) == json.dumps(res["rows"], sort_keys=True)


def test_alpha_sweep_reuses_stage1_and_harvest(smoke_cache, tmp_path):
    run_pipeline(smoke_cache, tmp_path / "a")
    sft_before = {p.name for p in (smoke_cache / "sft").iterdir()}
    harvest_before = {p.name for p in (smoke_cache / "harvest").iterdir()}
    run_pipeline(smoke_cache, tmp_path / "b", "data.target_source.alpha=0.5", "data.target_source.p_t=late")
    assert {p.name for p in (smoke_cache / "sft").iterdir()} == sft_before
    assert {p.name for p in (smoke_cache / "harvest").iterdir()} == harvest_before
    counts = read_json(f"{read_json(tmp_path / 'b' / 'pipeline.json')['stages']['student']}/mixture_counts.json")
    assert {k for k in counts["0"] if k.startswith("t=")} == {"t=2", "t=3"}  # late, T=3: t >= ceil(2T/3) = 2


@pytest.mark.parametrize("method,source_t", [("self_sft", 0), ("final_sft", 3)])
def test_self_and_final_sft_harvest_the_right_checkpoint(smoke_cache, tmp_path, method, source_t):
    run_pipeline(smoke_cache, tmp_path, f"method={method}")
    pipe = read_json(tmp_path / "pipeline.json")
    assert list(pipe["stages"]["harvest"]) == [f"t={source_t}"]
    buf = read_buffer(pipe["stages"]["harvest"][f"t={source_t}"])
    assert set(buf.column("t").to_pylist()) == {source_t}
    model = read_json(f"{pipe['stages']['harvest'][f't={source_t}']}/manifest.json")["info"]["model"]
    if source_t == 0:
        assert model == pipe["stages"]["base"]
    else:
        assert model.endswith("checkpoints/t=03")
    counts = read_json(f"{pipe['stages']['student']}/mixture_counts.json")
    assert set(counts["0"]) == {f"t={source_t}"}  # alpha = 0
