"""The whole-pipeline benchmarks run on the smoke world (``--tiny``): the α sweep through one stage cache against
independent pipelines (bench/sweep_cost.py) and TMS against GRPO at matched prompts × epochs (bench/tms_vs_grpo.py).
Their figures come from running them by hand (bench/README.md); nothing here is timed."""
import re

from tests.test_bench_scripts import run


def test_the_sweep_cost_bench_reuses_the_shared_stages_and_finds_the_same_results(tmp_path):
    out = run("bench/sweep_cost.py", "--tiny", "--work", str(tmp_path))
    lines = out.strip().splitlines()
    # the sweep's first job builds θ0, Stage 1 and the harvests; its second reuses them (the script asserts it too)
    sweep = out[out.index("sweep arm:"):out.index("independent arm:")]
    assert re.search(r"job 0 α=0: .*built: base, sft, harvest×2, student, eval×3", sweep), sweep
    assert re.search(r"job 1 α=0.5: .*built: student, eval {2}reused: base, sft, harvest×2, eval×2", sweep), sweep
    indep = out[out.index("independent arm:"):out.index("results (")]
    assert len(re.findall(r"built: base, sft, harvest×2, student, eval×3 {2}reused: -", indep)) == 2, indep
    assert out.count("identical") == 2 and "same results in both arms: True" in out
    assert lines[-1].startswith("speedup=") and float(lines[-1].split("=")[1]) > 0


def test_the_tms_vs_grpo_bench_matches_the_budget_and_reports_both_arms(tmp_path):
    out = run("bench/tms_vs_grpo.py", "--tiny", "--work", str(tmp_path))
    lines = out.strip().splitlines()
    assert "alignment: 32 training prompts" in out and "TMS student 2 optimiser steps, GRPO 2 rollouts" in out
    assert re.search(r"tms: .* s wall", out) and re.search(r"grpo: .* s wall", out)
    split = [x for x in lines if x.strip().startswith("by stage:")]
    assert len(split) == 2 and all(k in split[0] for k in ("base", "sft", "harvest", "student", "eval[student]"))
    assert "rl " in split[1] and "eval[rl]" in split[1]
    assert len(re.findall(r"target \d\.\d{3} {2}retention mean \d\.\d{3}", out)) == 2
    assert lines[-1].startswith("speedup=") and float(lines[-1].split("=")[1]) > 0
