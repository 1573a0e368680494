"""The toy reproduction driver: every method × seed and the ablations, then ``results.csv`` and the report.

``python repro.py [plan.yaml] [--out DIR] [--md FILE] [-- key=value ...]`` (plan: ``conf/repro/toy.yaml``).
Each run of the plan is the config ``python train.py <common> method=<m> seed=<s> <setting overrides>
<extra overrides>`` would compose, run in this process by :func:`tms.pipeline.run` into
``<out>/runs/<method>_<setting>_s<seed>/``; stages (θ0, Stage 1, harvests, students, evaluations) are
shared through the stage cache, so a rerun only computes what changed. Rows (:data:`COLUMNS`):

* ``base`` (θ0) and every method's model per (seed, setting), from the run's ``results.json``;
* ``sft_t=<t>`` for t = 1..T: SFT's checkpoint curve (each checkpoint evaluated on the same suite);
* ``buffer.csv``: per harvested t of each main TMS run, the buffer diagnostics and the student's NLL of
  t's samples (:func:`tms.evaluation.buffer_stats.buffer_report`).

Then :func:`tms.repro.report.write_report` renders ``docs/toy_reproduction.md`` and its plots.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from tms.cli.common import setup
from tms.config.validate import validate
from tms.core.io import read_json, write_json
from tms.evaluation.buffer_stats import buffer_report
from tms.pipeline import run
from tms.repro.report import write_report
from tms.stages.base_model import resolve_base
from tms.stages.common import model_kwargs
from tms.stages.evaluation import run_eval, summarize
from tms.stages.sft import checkpoint_ref, run_sft, stage1_indices

log = logging.getLogger("tms.repro")

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
#: columns of results.csv before the skill columns / after them (the skills are the suite's retention benchmarks)
HEAD = ["method", "seed", "setting", "t", "target"]
TAIL = ["retention_mean", "F", "xfer", "kl_fwd_target", "kl_rev_target", "kl_fwd_retention", "kl_rev_retention",
        "pld", "pass@1", "pass@4", "pass@8", "sc_acc", "answer_entropy"]
BUFFER_COLUMNS = ["seed", "setting", "t", "n", "accuracy", "mean_tokens", "finished"]


@dataclass(frozen=True)
class RunSpec:
    """One pipeline run of the plan."""

    method: str
    seed: int
    setting: str
    overrides: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.method}_{self.setting}_s{self.seed}".replace("=", "-")

    def all_overrides(self, common: Sequence[str], extra: Sequence[str]) -> list[str]:
        return [*common, f"method={self.method}", f"seed={self.seed}", *self.overrides, *extra]


def plan(p: DictConfig) -> list[RunSpec]:
    """The runs of plan ``p``: every method × seed (setting ``main``), then the TMS ablations on ``ablation_seeds``."""
    runs = [RunSpec(str(m), int(s), "main") for s in p.seeds for m in p.methods]
    for s in p.get("ablation_seeds") or []:
        for setting, overrides in (p.get("ablations") or {}).items():
            runs.append(RunSpec(str(p.get("ablation_method", "tms")), int(s), str(setting), tuple(map(str, overrides))))
    return runs


def compose(overrides: Sequence[str]) -> DictConfig:
    """The ``conf/train.yaml`` config with ``overrides``, as ``python train.py`` would compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _kl(row: dict, key: str, group: str) -> float | None:
    return _num(((row.get(key) or {}).get(group) or {}).get("kl_seq"))


def csv_row(row: dict, method: str, seed: int, setting: str, skills: Sequence[str], t: int | None = None) -> dict:
    """One results.csv row from a pipeline results row (:func:`tms.stages.evaluation.summarize`)."""
    ret = [row["scores"][s] for s in skills]
    pak = row.get("pass_at_k") or {}
    return {
        "method": method, "seed": seed, "setting": setting, "t": t, "target": row["target"],
        **{s: row["scores"][s] for s in skills},
        "retention_mean": sum(ret) / len(ret) if ret else None, "F": row.get("forgetting"), "xfer": row.get("xfer"),
        "kl_fwd_target": _kl(row, "kl_from_base", "target"), "kl_rev_target": _kl(row, "kl_to_base", "target"),
        "kl_fwd_retention": _kl(row, "kl_from_base", "retention"),
        "kl_rev_retention": _kl(row, "kl_to_base", "retention"),
        "pld": _num((row.get("pld") or {}).get("pld")),
        **{f"pass@{k}": pak.get(k) for k in ("1", "4", "8")}, **{f"pass@{k}": v for k, v in pak.items()},
        "sc_acc": row.get("sc_acc"), "answer_entropy": row.get("answer_entropy"),
    }


def sft_curve(cfg: DictConfig) -> list[tuple[int, dict]]:
    """SFT's checkpoints t = 1..T (``sft.num_checkpoints``) of ``cfg``'s Stage 1, each evaluated like a method."""
    base = resolve_base(cfg)
    sft = run_sft(cfg, base)  # cached: the SFT run of this seed built it
    T = int(cfg.sft.num_checkpoints)
    idx = stage1_indices(sft, T, list(range(1, T + 1)))
    base_res = run_eval(cfg, base, base)
    out = []
    for t in range(1, T + 1):
        ref, _ = checkpoint_ref(sft, base, idx[t])
        out.append((t, summarize(f"sft_t={t}", run_eval(cfg, ref, base), base_res, cfg)))
    return out


def buffer_rows(cfg: DictConfig, run_dir: Path, seed: int, setting: str, limit: int | None) -> list[dict]:
    """Buffer diagnostics of a TMS run (its harvest stages) with the student's NLL of each t's samples."""
    from hydra.utils import instantiate

    pipe = read_json(run_dir / "pipeline.json")
    dirs = {int(k.split("=")[1]): Path(v) for k, v in (pipe["stages"].get("harvest") or {}).items()}
    report = buffer_report(dirs, pipe["final_model"], instantiate(cfg.data.task), limit=limit,
                           model_kwargs=model_kwargs(cfg))
    rows = []
    for r in report["per_t"]:
        row = {"seed": seed, "setting": setting, "t": r["t"], "n": r["n"], "accuracy": r["accuracy"],
               "mean_tokens": r["mean_tokens"], "finished": r.get("finished")}
        for fmt, share in (r.get("format_share") or {}).items():
            row[f"share_{fmt}"] = share
        row["student_pld"] = (r.get("student_pld") or {}).get("pld")
        rows.append(row)
    return rows


def write_rows(rows: list[dict], path: Path, columns: Sequence[str]) -> None:
    """CSV with ``columns`` first, then any other key seen (in first-seen order); empty cell = missing."""
    cols = list(columns) + [k for r in rows for k in r if k not in columns]
    cols = list(dict.fromkeys(cols))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def world_summary(cfg: DictConfig, base_info: dict | None) -> dict[str, Any]:
    """What the report says about the toy world (from the config and θ0's manifest)."""
    b = cfg.model.get("build") or {}
    return {"model": cfg.model.name, "parameters": (base_info or {}).get("parameters"),
            "architecture": OmegaConf.to_container(b.get("architecture"), resolve=True) if b else None,
            "skills": OmegaConf.to_container(b.get("skills"), resolve=True) if b else None,
            "native": OmegaConf.to_container(b.get("native"), resolve=True) if b else None,
            "theta0_skill_accuracy": (base_info or {}).get("skill_accuracy"),
            "target": str(cfg.eval.target), "train_prompts": int(cfg.data.task.get("n_train", 0)),
            "sft": {"lr": float(cfg.sft.optimizer.lr), "epochs": int(cfg.sft.epochs),
                    "effective_batch_size": int(cfg.sft.effective_batch_size)}}


def theta0_info(cfg: DictConfig) -> dict | None:
    """θ0 of ``cfg`` resolved (built first if the cache lacks it) and its manifest's info (parameters, skill accuracy);
    None for a θ0 that is not a cached stage (a hub id or a local directory)."""
    cfg = cfg.copy()
    cfg.cache_dir = os.path.expanduser(str(cfg.cache_dir))
    manifest = Path(resolve_base(cfg).path).parent / "manifest.json"
    return read_json(manifest).get("info") if manifest.is_file() else None


@dataclass
class RunOutput:
    """What one run of the plan adds to the report: its results.csv rows (θ0's first on a main run), buffer rows."""

    rows: list[dict]
    buffer: list[dict]
    seconds: float


def run_one(spec: RunSpec, cfg: DictConfig, out: Path, p: DictConfig, overrides: Sequence[str] = ()) -> RunOutput:
    """Run ``spec`` (config ``cfg``, already validated) into ``<out>/runs/<name>`` and collect its rows."""
    skills = [str(b) for b in cfg.eval.retention]
    run_dir = out / "runs" / spec.name
    t0 = time.perf_counter()
    setup(cfg, run_dir)
    log.info("repro: %s (%s)", spec.name, " ".join(overrides))
    res = run(cfg, run_dir, validated=True)
    rows = [csv_row(res["rows"]["base"], "base", spec.seed, "main", skills)] if spec.setting == "main" else []
    rows.append(csv_row(res, spec.method, spec.seed, spec.setting, skills))
    if spec.method == "sft" and spec.setting == "main" and p.get("curve", True):
        rows += [csv_row(r, f"sft_t={t}", spec.seed, "main", skills, t=t) for t, r in sft_curve(cfg)]
    buf = []
    if spec.method == "tms" and spec.setting == "main" and p.get("buffer", True):
        buf = buffer_rows(cfg, run_dir, spec.seed, spec.setting, p.get("buffer_limit"))
    return RunOutput(rows, buf, round(time.perf_counter() - t0, 1))


def schedule(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """The order the runs are started in when several run at once: what others wait for first.

    Every run needs θ0; SFT-family runs of a seed need its Stage 1 (built by ``sft``) and TMS's harvest
    (built by ``tms``); RL runs need only θ0 and are the longest. So: each seed's ``sft`` interleaved with the
    RL runs (long jobs early, nothing waits on them), then each seed's ``tms``, then the rest in plan order.
    Two runs that need the same unbuilt stage still agree: the second waits for the stage's lock and reuses it.
    """
    rl = [s for s in specs if s.method in ("grpo", "reinforce")]
    sft = [s for s in specs if s.method == "sft" and s.setting == "main"]
    first: list[RunSpec] = []
    for i in range(max(len(rl), len(sft))):
        first += sft[i:i + 1] + rl[i:i + 1]
    first += [s for s in specs if s.method == "tms" and s.setting == "main"]
    return first + [s for s in specs if s not in first]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


def _run_in_worker(spec: RunSpec, overrides: list[str], out: Path, p: dict) -> RunOutput:
    return run_one(spec, compose(overrides), out, OmegaConf.create(p), overrides)


def reproduce(plan_path: Path, out: Path, md: Path | None, extra: Sequence[str] = (), command: str = "",
              seeds: Sequence[int] | None = None, jobs: int | None = None) -> dict:
    """Run the plan, write ``<out>/results.csv``, ``<out>/buffer.csv``, ``<out>/meta.json`` and the report.

    ``seeds``: replace the plan's seeds (the ablation seeds are kept only where they are among them).
    ``jobs``: runs at once (default: the plan's ``jobs``, else 1), each in its own process with
    ``cores // jobs`` torch threads, after θ0 (which every run needs) is built here with every core; 1 runs them
    one after another in this process. Every run has its own seed and the stages are shared through the cache (its
    locks order the builders); results.csv lists them in plan order whatever order they finish in. The torch
    thread count can change float reductions: seed 0 with ``jobs=2`` (1 thread per run on 2 cores) gave the rows of
    the sequential 2-thread run on 26 of 28 rows; the two others (a sampled metric, the correct-only student)
    moved by <= 0.005. A rerun with the same ``jobs`` on the same machine reproduces the rows exactly."""

    p = OmegaConf.load(plan_path)
    if seeds is not None:
        p.seeds = [int(x) for x in seeds]
        p.ablation_seeds = [int(x) for x in (p.get("ablation_seeds") or []) if int(x) in p.seeds]
    jobs = int(jobs if jobs is not None else p.get("jobs", 1))
    if jobs < 1:
        raise ValueError(f"repro: jobs must be >= 1, got {jobs}")
    specs = plan(p)
    common = [str(o) for o in p.get("common") or []]
    overrides = {s: s.all_overrides(common, extra) for s in specs}
    cfgs = {s: compose(overrides[s]) for s in specs}
    for s, cfg in cfgs.items():  # every config checked before any compute
        try:
            validate(cfg)
        except Exception as e:
            raise type(e)(f"repro run {s.name}: {e}") from e
    skills = [str(b) for b in cfgs[specs[0]].eval.retention]
    done: dict[RunSpec, RunOutput] = {}

    def rows() -> list[dict]:  # plan order; θ0's row once per seed, before the seed's first run
        out_rows, seen = [], set()
        for r in (r for spec in specs if spec in done for r in done[spec].rows):
            if r["method"] == "base":
                if r["seed"] in seen:
                    continue
                seen.add(r["seed"])
            out_rows.append(r)
        return out_rows

    def record(s: RunSpec, o: RunOutput) -> None:  # after every run: a crash loses nothing
        done[s] = o
        write_rows(rows(), out / "results.csv", HEAD + skills + TAIL)
        write_rows([b for spec in specs if spec in done for b in done[spec].buffer], out / "buffer.csv", BUFFER_COLUMNS)

    started = time.perf_counter()
    if jobs == 1:
        for s in specs:
            record(s, run_one(s, cfgs[s], out, p, overrides[s]))
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        for cfg in {str(c.model): c for c in cfgs.values()}.values():  # θ0, which every run waits for, with every core
            theta0_info(cfg)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        log.info("repro: %d runs, %d at once, %d torch thread(s) each", len(specs), jobs, threads)
        plain = OmegaConf.to_container(p, resolve=True)
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                    initargs=(threads,)) as pool:
            futures = {pool.submit(_run_in_worker, s, overrides[s], out, plain): s for s in schedule(specs)}
            for f in cf.as_completed(futures):
                s = futures[f]
                try:
                    record(s, f.result())
                except Exception as e:
                    for other in futures:
                        other.cancel()
                    raise RuntimeError(f"repro run {s.name} failed: {e}") from e
    wall = round(time.perf_counter() - started, 1)
    timings = {s.name: done[s].seconds for s in specs}
    meta = {"command": command, "plan": str(plan_path), "seeds": [int(x) for x in p.seeds], "overrides": list(extra),
            "world": world_summary(cfgs[specs[0]], theta0_info(cfgs[specs[0]])), "jobs": jobs, "timings": timings,
            "total_seconds": round(sum(timings.values()), 1), "wall_seconds": wall, "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d")}
    write_json(out / "meta.json", meta)
    buf = [b for s in specs for b in done[s].buffer]
    if md is not None:
        write_report(out / "results.csv", out / "buffer.csv" if buf else None, out, md, meta)
    return {"rows": rows(), "buffer": buf, "meta": meta}


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python repro.py", description=__doc__.split("\n")[0])
    ap.add_argument("plan", nargs="?", default=str(CONF / "repro" / "toy.yaml"), help="the plan (conf/repro/toy.yaml)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "toy_reproduction"), help="results.csv, buffer.csv, plots")
    ap.add_argument("--md", default=str(ROOT / "docs" / "toy_reproduction.md"), help="the report ('' = none)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="replace the plan's seeds (e.g. --seeds 0)")
    ap.add_argument("--jobs", type=int, default=None, help="runs at once, one process each (default: the plan's jobs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    command = " ".join(["python repro.py", *(argv or []), *(["--", *extra] if extra else [])])
    reproduce(Path(args.plan), Path(args.out), Path(args.md) if args.md else None, extra, command, seeds=args.seeds,
              jobs=args.jobs)


if __name__ == "__main__":
    main()
