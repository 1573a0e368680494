"""Wall time of the TMS pipeline against GRPO at matched prompts × epochs, with the target and retention each reaches.

    python bench/tms_vs_grpo.py                 # the (shrunk, see SETTING) toy world
    python bench/tms_vs_grpo.py --tiny          # the smoke world (seconds; the test suite runs it)
    python bench/tms_vs_grpo.py --setting default   # the toy world as python train.py runs it (~25 min on 2 cores)

Each arm is one ``python train.py method=<tms|grpo> <setting>`` in its own empty cache, so each pays for everything
it needs: TMS for θ0, Stage 1, the T harvests, its student and three evaluations (θ0, SFT, student); GRPO for θ0,
its RL run and two evaluations (θ0, GRPO). θ0 is the same in both (the same stage key), built in each.

Matched budget (``conf/method/grpo.yaml``): the RL phase sees the same training prompts (``data.task`` with
``data.train_limit``) for the same number of passes (``rl.epochs = sft.epochs``) in optimiser steps of the same
number of prompts (``rl.prompts_per_step = sft.effective_batch_size``), so GRPO takes as many rollouts as the TMS
student (and Stage 1) take optimiser steps; each rollout samples ``rl.num_generations`` completions per prompt. The
script prints the alignment from the composed configs, checks it, and checks the measured step counts (the stage
manifests' ``global_steps``).

Printed: each arm's wall seconds with its time by stage (the manifests' ``duration_s``; ``other`` is process start,
config validation, loading and writing the run directory), target, retention mean and F from each run's
results.json, the ratio without the θ0 build both share, and last ``speedup=<GRPO seconds / TMS seconds>``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pipeline import SETTING, TINY, compose, format_split, machine, retention, stage_split, train  # noqa: E402


def alignment(setting: list[str]) -> dict:
    """Prompts, passes and steps of the TMS student and of GRPO, from the composed configs."""
    from hydra.utils import instantiate

    from tms.core.checks import optimizer_steps
    from tms.core.distributed import accumulation
    from tms.methods.rl_config import rollout_steps

    tms, grpo = compose(["method=tms", *setting]), compose(["method=grpo", *setting])
    out = {}
    for name, cfg in (("tms", tms), ("grpo", grpo)):
        prompts = [e.id for e in instantiate(cfg.data.task).examples("train", cfg.data.get("train_limit"))]
        out[name] = {"prompts": prompts, "train_limit": cfg.data.get("train_limit")}
    s = tms.sft
    acc = accumulation(s, tms.trainer)
    n = len(out["tms"]["prompts"])
    out["tms"].update(epochs=int(s.epochs), prompts_per_step=int(s.batch_size) * acc,
                      steps=optimizer_steps(n, int(s.batch_size), 1, acc, int(s.epochs), int(s.max_steps or -1)),
                      T=int(s.num_checkpoints), k=int(tms.harvest.samples_per_prompt),
                      harvest_prompts=int(tms.harvest.prompt_subset or n))
    rl = grpo.rl
    out["grpo"].update(epochs=int(rl.epochs), prompts_per_step=int(rl.prompts_per_step), G=int(rl.num_generations),
                       steps=rollout_steps(grpo, len(out["grpo"]["prompts"]), 1), iterations=int(rl.num_iterations))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the smoke world (seconds)")
    ap.add_argument("--setting", choices=("bench", "default"), default="bench",
                    help="bench: SETTING (the shrunk toy); default: the toy world as python train.py runs it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="working directory, kept (default: a temporary one, deleted)")
    a = ap.parse_args()
    setting = TINY if a.tiny else (SETTING if a.setting == "bench" else [])
    print(machine(a.threads))
    print(f"overrides (both arms): {' '.join(setting) or '-'}")
    al = alignment(setting)
    t, g = al["tms"], al["grpo"]
    assert t["prompts"] == g["prompts"], "TMS and GRPO train on different prompts"
    assert (t["epochs"], t["prompts_per_step"], t["steps"]) == (g["epochs"], g["prompts_per_step"], g["steps"]), al
    n = len(t["prompts"])
    print(f"alignment: {n} training prompts (data.train_limit={t['train_limit']}) × {t['epochs']} epochs "
          f"(sft.epochs = rl.epochs), {t['prompts_per_step']} prompts a step (sft.effective_batch_size = "
          f"rl.prompts_per_step): TMS student {t['steps']} optimiser steps, GRPO {g['steps']} rollouts × "
          f"{g['iterations']} optimiser step(s)")
    print(f"  sampled completions: TMS harvest {t['T']} checkpoints × {t['harvest_prompts']} prompts × k={t['k']} = "
          f"{t['T'] * t['harvest_prompts'] * t['k']}; GRPO {g['steps']} rollouts × {g['prompts_per_step']} prompts × "
          f"G={g['G']} = {g['steps'] * g['prompts_per_step'] * g['G']} (TMS also trains Stage 1: {t['steps']} more steps)")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="tms-vs-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = {}
        for method in ("tms", "grpo"):
            cache, out = work / f"cache-{method}", work / method
            for old in (cache, out):
                shutil.rmtree(old, ignore_errors=True)
            run = train([f"method={method}", *setting], cache, out, threads=a.threads)
            job = run.job()
            built = job.built_names()
            need = ("base", "sft", "harvest", "student") if method == "tms" else ("base", "rl")
            assert all(built.get(x) for x in need) and not job.reused, (method, built, job.reused)
            trained = next(s for s in job.built if s["name"] == ("student" if method == "tms" else "rl"))
            steps = int(trained["info"]["global_steps"])
            assert steps == t["steps"] * (1 if method == "tms" else g["iterations"]), (method, steps)
            runs[method] = run
            r = job.results
            print(f"\n{method}: {run.seconds:.1f} s wall, {run.cpu_seconds:.1f} CPU s (cache_dir={cache})")
            print(f"  by stage: {format_split(stage_split(job))}")
            print(f"  {'student' if method == 'tms' else 'RL'}: {steps} optimiser steps; target {r['target']:.3f}  "
                  f"retention mean {retention(r):.3f}  F {r['forgetting']:+.3f}  "
                  f"(θ0: target {r['rows']['base']['target']:.3f}, retention {retention(r['rows']['base']):.3f})")
        base = {m: stage_split(runs[m].job()).get("base", 0.0) for m in runs}
        tms_s, grpo_s = runs["tms"].seconds, runs["grpo"].seconds
        print(f"\nTMS {tms_s:.1f} s, GRPO {grpo_s:.1f} s; without the θ0 build each pays "
              f"({base['tms']:.1f} / {base['grpo']:.1f} s): TMS {tms_s - base['tms']:.1f} s, GRPO "
              f"{grpo_s - base['grpo']:.1f} s, ratio {(grpo_s - base['grpo']) / (tms_s - base['tms']):.3f}")
        print(f"speedup={grpo_s / tms_s:.3f}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
