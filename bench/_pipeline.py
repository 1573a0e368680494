"""What the pipeline benchmarks share (``sweep_cost.py``, ``tms_vs_grpo.py``): run ``python train.py`` (one run, or a
``-m`` multirun) as a child process with a given cache directory and overrides, time it, and read back what it did —
each job's ``results.json``, which stages it built (the cache manifests' ``started`` / ``finished`` / ``duration_s``)
and which it reused (the cache's ``<stage>: reusing <dir>`` log lines).

The child is the real entry point (``train.py`` at the repository root, this checkout's ``tms`` first on
``PYTHONPATH``), offline, on ``threads`` CPU threads (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``).
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: the overrides every benchmarked run gets (quiet children; the csv logger is the toy's default)
QUIET = ["trainer.enable_progress_bar=false"]


#: the shrunk toy world of both full benchmarks (both arms of each get the same): every stage cut by the same factor,
#: 256 of the toy's 2000 training prompts (1/7.8), so that what the stages cost keeps the proportions of the toy as
#: ``python train.py`` runs it: θ0 pretrained for 216 steps of 64 (1689 x 256/2000; ~28 s on 2 cores instead of
#: ~3.7 minutes), its skill accuracy on 32 prompts a skill, Stage 1 / students (and GRPO) on the 256 prompts for the
#: toy's 3 epochs (48 optimiser steps of 16), the toy's T = 10 checkpoints, and a small evaluation (32 prompts a
#: benchmark, Pass@k on 8, KL on 32: 1/6 to 1/8 of the toy's)
SETTING = [
    "model.build.pretrain.max_steps=216",
    "+model.build.eval_n=32",
    "data.train_limit=256",
    "eval.limit=32",
    "eval.sampling.limit=8",
    "eval.kl.limit=32",
]
#: the smoke world (experiment=smoke: seconds a stage) cut further for the tests: 32 prompts (2 optimiser steps), T = 2,
#: a 4-step θ0, one retention and one transfer benchmark on 4 prompts
TINY = ["experiment=smoke", "sft.num_checkpoints=2", "data.train_limit=32", "model.build.pretrain.max_steps=4",
        "+model.build.eval_n=4", "eval.limit=4", "eval.other_targets=[sum]", "eval.retention=[add]",
        "eval.sampling.n=2", "eval.sampling.ks=[1,2]", "eval.sampling.limit=2", "eval.kl.limit=2", "eval.pld_limit=4"]


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT),
            "TMS_CACHE": ""}  # the cache is always cache_dir=... on the command line


@dataclass
class Job:
    """One pipeline run (a single ``python train.py``, or one job of a multirun)."""

    num: int
    dir: Path                       # the run directory (results.json, config.resolved.yaml, pipeline.json)
    seconds: float                  # wall seconds: start (or the previous job's end) to its results.json
    results: dict[str, Any]
    config: dict[str, Any]          # config.resolved.yaml
    built: list[dict[str, Any]] = field(default_factory=list)   # stages published during the job (stage_records)
    reused: list[str] = field(default_factory=list)             # stage names the job's log says it reused

    def value(self, dotted: str) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            node = node[part]
        return node

    def built_names(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.built:
            out[s["name"]] = out.get(s["name"], 0) + 1
        return out


@dataclass
class Run:
    """One ``python train.py`` child process: its wall seconds, its jobs, its output."""

    seconds: float
    cache_dir: str
    out_dir: Path
    jobs: list[Job]
    log: Path                       # stdout + stderr of the child
    cpu_seconds: float = 0.0        # user + system CPU seconds of the child (all its threads): what other processes
                                    # on a shared machine change less than the wall seconds

    def job(self) -> Job:
        assert len(self.jobs) == 1, f"{len(self.jobs)} jobs"
        return self.jobs[0]


def train(overrides: list[str], cache_dir: str | Path, out_dir: Path, threads: int = 2, multirun: bool = False,
          timeout: float | None = None) -> Run:
    """``python train.py [-m] <overrides> cache_dir=<cache_dir>`` with its run (or sweep) directory ``out_dir``.

    ``cache_dir`` may hold an interpolation (e.g. ``.../cache-${data.target_source.alpha}``: one cache per job of a
    multirun). Raises with the tail of the child's output when it fails.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    where = ([f"hydra.sweep.dir={out_dir}", "hydra.sweep.subdir=${hydra.job.num}"] if multirun
             else [f"hydra.run.dir={out_dir}"])
    cmd = [sys.executable, str(ROOT / "train.py")] + (["-m"] if multirun else []) + QUIET + list(overrides) + \
        [f"cache_dir={cache_dir}"] + where
    log = out_dir.parent / f"{out_dir.name}.log"
    started = time.time()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(threads), stdout=fh, stderr=subprocess.STDOUT,
                              timeout=timeout)
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"python train.py failed (rc {proc.returncode}): {' '.join(cmd)}\n{text[-4000:]}")
    dirs = sorted((p for p in out_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
        if multirun else [out_dir]
    jobs, previous = [], started
    records = stage_records(cache_roots(cache_dir, dirs))
    for num, d in enumerate(dirs):
        res = d / "results.json"
        if not res.is_file():
            raise RuntimeError(f"{d} has no results.json (see {log})")
        end = res.stat().st_mtime
        built = [r for r in records if previous <= r["finished"] <= end]
        jobs.append(Job(num, d, end - previous, json.loads(res.read_text()), read_config(d), built,
                        reused_stages(job_log(d, text, multirun))))
        previous = end
    return Run(seconds, str(cache_dir), out_dir, jobs, log, cpu)


def read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run_dir / "config.resolved.yaml").read_text())


def cache_roots(cache_dir: str | Path, dirs: list[Path]) -> list[Path]:
    """The cache directories the runs used (each job's resolved ``cache_dir``: one, or one per job)."""
    roots = []
    for d in dirs:
        root = Path(read_config(d)["cache_dir"])
        if root not in roots:
            roots.append(root)
    return roots or [Path(os.path.expanduser(str(cache_dir)))]


def job_log(run_dir: Path, text: str, multirun: bool) -> str:
    """The job's own log (Hydra's ``<run dir>/train.log``), else the child's whole output."""
    path = run_dir / "train.log"
    return path.read_text(errors="replace") if path.is_file() else text


REUSING = re.compile(r"\] - (\w+): reusing (\S+)")


def reused_stages(text: str) -> list[str]:
    """Stage names of the ``<stage>: reusing <dir>`` lines of a log (:meth:`tms.core.cache.Stage.ensure`)."""
    return [m.group(1) for m in REUSING.finditer(text)]


def stage_label(manifest: dict[str, Any]) -> str:
    """``base``, ``sft``, ``harvest``, ``student``, ``rl``, or ``eval[<what it evaluated>]``."""
    name = manifest["stage"]
    if name == "eval":
        ident = (manifest.get("key") or {}).get("model") or {}
        what = str(ident.get("stage", "?")).split("/")[0] if isinstance(ident, dict) else "?"
        return f"eval[{what}]"
    return name


def stage_records(roots: list[Path]) -> list[dict[str, Any]]:
    """Every finished stage of the caches: name, label, hash, started, finished, duration_s; by start time."""
    out = []
    for root in roots:
        for path in root.glob("*/*/manifest.json"):
            m = json.loads(path.read_text())
            if m.get("status") != "complete":
                continue
            out.append({"name": m["stage"], "label": stage_label(m), "hash": m["hash"], "dir": str(path.parent),
                        "started": float(m["started"]), "finished": float(m["finished"]),
                        "duration_s": float(m["duration_s"]), "info": m.get("info") or {}, "key": m.get("key") or {}})
    return sorted(out, key=lambda r: r["started"])


def stage_split(job: Job) -> dict[str, float]:
    """Seconds per stage label the job built (harvests summed over t), plus ``other`` (process start, config
    validation, loading, writing the run directory: the job's seconds not inside a stage)."""
    split: dict[str, float] = {}
    for s in job.built:
        split[s["label"]] = split.get(s["label"], 0.0) + s["duration_s"]
    split["other"] = job.seconds - sum(split.values())
    return split


def format_split(split: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.1f} s" for k, v in split.items())


def flat_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """The numbers of a results.json (dotted keys; paths and other strings left out)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flat_numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = obj
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The numeric fields two results.json disagree on (``key: a != b``), or that only one of them has."""
    fa, fb = flat_numbers(a), flat_numbers(b)
    return [f"{k}: {fa.get(k)} != {fb.get(k)}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def retention(results: dict[str, Any]) -> float | None:
    """The mean of a results row's retention scores (``objective.metric=retention_mean``), None without any."""
    scores = list((results.get("retention") or {}).values())
    return sum(scores) / len(scores) if scores else None


def compose(overrides: list[str]):
    """The repo's Hydra config with ``overrides`` (what ``python train.py ...`` would get; Hydra's own node too)."""
    sys.path.insert(0, str(ROOT))
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def machine(threads: int) -> str:
    import platform

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} threads per child, "
            f"torch {torch.__version__}, python {platform.python_version()}")
