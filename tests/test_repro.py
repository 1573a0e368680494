"""The toy reproduction driver (`python repro.py`): a smoke plan end to end, and the plan of the real one."""
import csv
import math

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, compose
from tms.repro.run import HEAD, TAIL, plan, reproduce, schedule


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _f(v):
    return float(v) if v not in ("", None) else None


def test_the_real_plan_has_every_method_seed_and_ablation_and_composes():
    p = OmegaConf.load(REPO / "conf" / "repro" / "toy.yaml")
    runs = plan(p)
    main = {(r.method, r.seed) for r in runs if r.setting == "main"}
    assert main == {(m, s) for m in ["sft", "self_sft", "final_sft", "tms", "grpo", "reinforce"] for s in (0, 1, 2)}
    settings = {r.setting for r in runs if r.setting != "main"}
    assert settings == {"p_t=early", "p_t=late", "alpha=0", "alpha=0.5", "alpha=1", "correct_only",
                        *{f"T={t}" for t in (2, 4, 6, 8, 12)}}
    assert len({r.name for r in runs}) == len(runs)  # one run directory each
    for r in runs:  # every run composes to what it claims
        cfg = compose(r.all_overrides(list(p.common), []))
        assert cfg.method.name == r.method and cfg.seed == r.seed
        if r.setting.startswith("T="):
            assert cfg.sft.num_checkpoints == int(r.setting[2:])
        if r.setting.startswith("alpha="):
            assert cfg.data.target_source.alpha == float(r.setting[6:])
        assert list(cfg.sft.grid) == [2, 4, 6, 8, 10, 12]  # one Stage 1 per seed serves every T


@pytest.mark.timeout(600)
def test_smoke_reproduction_writes_consistent_rows_and_the_report(smoke_cache, tmp_path):
    plan_path = tmp_path / "plan.yaml"
    OmegaConf.save(OmegaConf.create({
        "seeds": [0], "methods": ["sft", "tms"], "common": ["experiment=smoke", f"cache_dir={smoke_cache}",
                                                          "sft.grid=[2,3]"],
        "curve": True, "buffer": True, "buffer_limit": 16, "ablation_seeds": [0],
        "ablations": {"T=2": ["sft.num_checkpoints=2"]}}), plan_path)
    out, md = tmp_path / "out", tmp_path / "report.md"
    reproduce(plan_path, out, md, command="python repro.py plan.yaml", jobs=1)
    rows = _rows(out / "results.csv")
    cols = list(rows[0])
    skills = ["add", "reverse", "max", "sort"]
    assert cols[:len(HEAD)] == HEAD and cols[len(HEAD):len(HEAD) + 4] == skills and set(TAIL) <= set(cols)
    by = {(r["method"], r["setting"]): r for r in rows}
    assert set(by) == {("base", "main"), ("sft", "main"), ("tms", "main"), ("tms", "T=2"),
                       *{(f"sft_t={t}", "main") for t in (1, 2, 3)}}
    base = by["base", "main"]
    assert _f(base["F"]) == 0 and all(_f(base[k]) == 0 for k in TAIL if k.startswith("kl_"))
    for r in rows:
        ret = [_f(r[s]) for s in skills]
        assert math.isclose(_f(r["retention_mean"]), sum(ret) / 4, abs_tol=1e-9)
        assert math.isclose(_f(r["F"]), sum(a - _f(base[s]) for a, s in zip(ret, skills)) / 4, abs_tol=1e-9)
        pak = [_f(r[f"pass@{k}"]) for k in (1, 2, 4)]  # the smoke suite's ks
        assert 0 <= _f(r["target"]) <= 1 and pak == sorted(pak) and r["pass@8"] == ""
    # SFT's last checkpoint is the SFT model: the same numbers; an earlier one is another model
    last, sft = by["sft_t=3", "main"], by["sft", "main"]
    assert all(last[k] == sft[k] for k in ["target", *skills, "kl_rev_target", "kl_fwd_target", "pld"])
    assert by["sft_t=1", "main"]["t"] == "1" and by["sft_t=1", "main"]["pld"] != sft["pld"]
    for r in rows:  # a trained model differs from θ0 in both KL directions, and the two directions differ
        if r["method"] != "base":
            assert _f(r["kl_fwd_target"]) != 0 and _f(r["kl_rev_target"]) != 0
            assert r["kl_fwd_target"] != r["kl_rev_target"]
    buf = _rows(out / "buffer.csv")
    assert [int(b["t"]) for b in buf] == [1, 2, 3]  # TMS (alpha 0.25, uniform) mixes over t = 1..T
    for b in buf:
        shares = [_f(v) for k, v in b.items() if k.startswith("share_") and v != ""]
        assert shares and math.isclose(sum(shares), 1.0, abs_tol=1e-9) and 0 <= _f(b["accuracy"]) <= 1
        assert _f(b["student_pld"]) > 0 and _f(b["mean_tokens"]) > 0
    text = md.read_text()
    assert "python repro.py plan.yaml" in text and "tms" in text and (out / "plane.png").stat().st_size > 0
    # a rerun reuses every stage through the cache and reproduces the file exactly
    before = (out / "results.csv").read_text()
    reproduce(plan_path, out, None)
    assert (out / "results.csv").read_text() == before
    # two runs at once in worker processes (stages from the cache now): the same file, row for row, in plan order
    reproduce(plan_path, tmp_path / "out2", None, jobs=2)
    assert (tmp_path / "out2" / "results.csv").read_text() == (out / "results.csv").read_text()
    assert (tmp_path / "out2" / "buffer.csv").read_text() == (out / "buffer.csv").read_text()


def test_schedule_starts_each_seeds_sft_before_what_needs_its_stage_1_and_keeps_every_run_once():
    runs = plan(OmegaConf.load(REPO / "conf" / "repro" / "toy.yaml"))
    order = schedule(runs)
    assert sorted(order, key=runs.index) == runs  # a permutation
    pos = {r: i for i, r in enumerate(order)}
    for r in runs:
        sft = next(x for x in runs if x.method == "sft" and x.setting == "main" and x.seed == r.seed)
        if r.method in ("tms", "final_sft") or r.setting != "main":
            assert pos[sft] < pos[r]
    assert [(r.method, r.seed) for r in order[:3]] == [("sft", 0), ("grpo", 0), ("sft", 1)]  # long RL runs start early


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs"):
        reproduce(REPO / "conf" / "repro" / "toy.yaml", tmp_path, None, jobs=0)
