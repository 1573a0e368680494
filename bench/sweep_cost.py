"""What the stage cache saves an α sweep: one ``python train.py -m hparams=alpha`` through one cache against the same
five pipelines each in its own empty cache.

    python bench/sweep_cost.py                  # 5 α values of method=tms on the (shrunk, see SETTING) toy world
    python bench/sweep_cost.py --tiny           # 2 α values on the smoke world (seconds; the test suite runs it)
    python bench/sweep_cost.py --alphas 0,0.1,0.25,0.5,0.75 --setting default   # other α values / the toy as is

Both arms are the same child process, ``python train.py -m hparams=alpha data.target_source.alpha=<α list> <setting>``
(the README's sweep command; Hydra's basic launcher runs the jobs one after the other in that process), so the only
difference between them is the cache:

* ``sweep``: ``cache_dir=<one dir>``: the first job builds θ0, Stage 1, the T harvests and the θ0 and SFT
  evaluations, the next ones reuse them and only train and evaluate their student (asserted from the stage
  manifests, which say what each job built, and from the jobs' ``<stage>: reusing`` log lines);
* ``independent``: ``cache_dir=<dir>/cache-independent-${data.target_source.alpha}``: every job starts from an empty cache of
  its own and builds everything (asserted likewise).

Every job has the same seed, so each α must reach the same results in both arms: the script compares the method's
row of every job's ``results.json`` (every number, bit for bit) and prints any difference. α = 1 trains on the
references only: it needs no Stage 1 and no harvest, so its independent pipeline builds neither (and has no SFT row,
which its sweep job, finding the cached Stage 1, has).

The toy world as it is (``--setting default``) takes ~8.5 minutes a pipeline from a cold cache on 2 free cores (the
README's 8 min 32 s; θ0's pretraining ~5.5 of them), far beyond the 10 minutes the 5 + 5 pipelines may take here:
``SETTING`` (``bench/_pipeline.py``) shrinks every stage with ordinary overrides, the same for both arms (printed).
Printed: the wall (and CPU) seconds of each arm and of each job (a job: from the previous job's results.json, or the
process start, to its own), what each job built and reused, the seconds per stage kind in each arm (the manifests'
``duration_s``; ``other``: process start, config validation, loading, the run directory), the results check, and last
``speedup=<independent seconds / sweep seconds>``, after the same ratio in CPU seconds (less sensitive to other load
on a shared machine) and without the θ0 builds (what a sweep from an already cached θ0 would save).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pipeline import SETTING, TINY, differences, format_split, machine, retention, stage_split, train  # noqa: E402


def check_sweep(jobs, alphas) -> None:
    """The first job builds the shared stages, every later one reuses them and builds its student alone."""
    first = jobs[0].built_names()
    shared = ("base", "sft", "harvest") if float(alphas[0]) < 1 else ("base",)
    assert all(first.get(n) for n in shared), f"the sweep's first job built {first}, expected {shared}"
    for job in jobs[1:]:
        built = job.built_names()
        assert set(built) <= {"student", "eval"} and built.get("student") == 1, \
            f"sweep job {job.num} built {built}: only its student and its evaluation expected"
        needs = ("base", "sft", "harvest") if float(job.value("data.target_source.alpha")) < 1 else ("base",)
        missing = [n for n in needs if n not in job.reused]
        assert not missing, f"sweep job {job.num} did not log reusing {missing} (reused: {job.reused})"


def check_independent(jobs) -> None:
    roots = {job.config["cache_dir"] for job in jobs}
    assert len(roots) == len(jobs), f"the independent jobs shared caches: {roots}"
    for job in jobs:
        built = job.built_names()
        needs = ("base", "sft", "harvest") if float(job.value("data.target_source.alpha")) < 1 else ("base",)
        assert all(built.get(n) for n in needs) and built.get("student") == 1, \
            f"independent job {job.num} built {built}, expected {needs} and a student"
        assert not {"base", "sft", "harvest"} & set(job.reused), f"independent job {job.num} reused {job.reused}"


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}×{v}" if v > 1 else k for k, v in counts.items()) or "-"


def arm_split(jobs) -> dict[str, float]:
    total: dict[str, float] = {}
    for job in jobs:
        for k, v in stage_split(job).items():
            total[k] = total.get(k, 0.0) + v
    return total


def method_row(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "rows"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="2 α values on the smoke world (seconds)")
    ap.add_argument("--alphas", default=None, help="comma-separated α values (default 0,0.25,0.5,0.75,1; --tiny 0,0.5)")
    ap.add_argument("--setting", choices=("bench", "default"), default="bench",
                    help="bench: SETTING (the shrunk toy); default: the toy world as python train.py runs it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="working directory, kept (default: a temporary one, deleted)")
    a = ap.parse_args()
    alphas = (a.alphas or ("0,0.5" if a.tiny else "0,0.25,0.5,0.75,1")).split(",")
    setting = TINY if a.tiny else (SETTING if a.setting == "bench" else [])
    overrides = ["method=tms", "hparams=alpha", f"data.target_source.alpha={','.join(alphas)}", *setting]
    print(machine(a.threads))
    print(f"α values: {', '.join(alphas)}")
    print(f"overrides (both arms): {' '.join(overrides)}")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="sweep-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for old in [*work.glob("cache-*"), work / "sweep", work / "independent"]:  # every arm starts empty
            shutil.rmtree(old, ignore_errors=True)
        arms = {}
        for name, cache in (("sweep", work / "cache-sweep"),
                            ("independent", work / "cache-independent-${data.target_source.alpha}")):
            out = work / name
            run = train(overrides, cache, out, threads=a.threads, multirun=True)
            assert len(run.jobs) == len(alphas), f"{name}: {len(run.jobs)} jobs for {len(alphas)} α values"
            (check_sweep(run.jobs, alphas) if name == "sweep" else check_independent(run.jobs))
            arms[name] = run
            print(f"\n{name} arm: cache_dir={cache}: {run.seconds:.1f} s wall ({run.seconds / len(run.jobs):.1f} s a run), "
                  f"{run.cpu_seconds:.1f} CPU s")
            for job in run.jobs:
                print(f"  job {job.num} α={job.value('data.target_source.alpha')}: {job.seconds:7.1f} s  "
                      f"target {job.results['target']:.3f}  built: {describe(job.built_names())}  "
                      f"reused: {describe({n: job.reused.count(n) for n in dict.fromkeys(job.reused)})}")
            print(f"  seconds by stage: {format_split(arm_split(run.jobs))}")
            later = run.jobs[1:]
            if later:
                print(f"  jobs after the first: {sum(j.seconds for j in later) / len(later):.1f} s a run")
        print("\nresults (the method's row of results.json; the same seed in both arms):")
        same = True
        for s, i in zip(arms["sweep"].jobs, arms["independent"].jobs):
            diff = differences(method_row(s.results), method_row(i.results))
            only = sorted(set(s.results["rows"]) ^ set(i.results["rows"]))
            same &= not diff
            print(f"  α={s.value('data.target_source.alpha')}: target sweep {s.results['target']:.4f}  independent "
                  f"{i.results['target']:.4f}  retention {retention(s.results):.4f} / {retention(i.results):.4f}  {'identical' if not diff else 'DIFFERENT: ' + '; '.join(diff[:5])}"
                  + (f"  (rows only in one arm: {', '.join(only)})" if only else ""))
        print(f"same results in both arms: {same}")
        sweep_s, indep_s = arms["sweep"].seconds, arms["independent"].seconds
        sweep_c, indep_c = arms["sweep"].cpu_seconds, arms["independent"].cpu_seconds
        base = {k: arm_split(arms[k].jobs).get("base", 0.0) for k in arms}
        print(f"\nsweep {sweep_s:.1f} s, independent {indep_s:.1f} s (work dir {work})")
        print(f"CPU seconds (both threads): sweep {sweep_c:.1f}, independent {indep_c:.1f}: ratio {indep_c / sweep_c:.3f}")
        print(f"without the θ0 builds (sweep {base['sweep']:.1f} s, independent {base['independent']:.1f} s): "
              f"ratio {(indep_s - base['independent']) / (sweep_s - base['sweep']):.3f}")
        print(f"speedup={indep_s / sweep_s:.3f}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
