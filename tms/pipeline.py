"""The stage graph of each method: θ0 → [Stage 1 SFT] → [harvest H[t, x] → student | RL] → evaluation.

Each stage is a cached directory (:mod:`tms.core.cache`) keyed by exactly the config that determines
its outputs plus the identity of the code that builds it (:mod:`tms.core.code_identity`), so a sweep over
α or p(t) pays for Stage 1 and the harvest once, a second identical invocation reuses everything, and
a code fix rebuilds the stages it affects (``cache_reuse=warn``: reuses them with a warning).
``run(cfg)`` is what ``python train.py`` calls; the stages themselves are in :mod:`tms.stages`.

Method kinds (``method.kind``, :data:`GRAPHS`):
    sft      θ0 → Stage 1 SFT on the references; the last checkpoint is the model.
    student  θ0 → [Stage 1 if the target source needs SFT checkpoints] → harvest → student
             (TMS, Self-SFT, Final-SFT: only ``data.target_source`` differs).
    rl       θ0 → GRPO / REINFORCE (:mod:`tms.stages.rl`, :mod:`tms.methods.rl`).
Every graph ends the same way: θ0, the SFT baseline (when its Stage 1 exists) and the method's model are
evaluated on the suite (:mod:`tms.stages.evaluation`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.config.eval import suite_names
from tms.config.validate import validate
from tms.core import distributed
from tms.core.cache import Stage
from tms.core.io import write_json
from tms.stages.base_model import resolve_base
from tms.stages.common import ModelRef, final_checkpoint, link
from tms.stages.evaluation import checkpoint_curve, run_eval, summarize
from tms.stages.harvest import run_harvest
from tms.stages.rl import run_rl
from tms.stages.sft import cached_sft_final, run_sft, stage1_indices
from tms.stages.student import run_student


@dataclass
class Trained:
    """What a method's graph produced: its final model, its stage directories, and Stage 1 if it ran."""

    final: ModelRef
    stages: dict[str, Any] = field(default_factory=dict)
    sft: Stage | None = None


def sft_graph(cfg: DictConfig, base: ModelRef) -> Trained:
    sft = run_sft(cfg, base)
    return Trained(final_checkpoint(sft), sft=sft)


def student_graph(cfg: DictConfig, base: ModelRef) -> Trained:
    T = int(cfg.sft.num_checkpoints)
    source = instantiate(cfg.data.target_source)
    ts = source.required_checkpoints(T)
    sft = run_sft(cfg, base) if any(t > 0 for t in ts) else None
    idx = stage1_indices(sft, T, ts)  # the identity unless Stage 1 saved a shared grid (T sweep)
    harvests = run_harvest(cfg, base, sft, [idx[t] for t in ts]) if ts else []
    student = run_student(cfg, base, source, harvests, T, relabel={idx[t]: t for t in ts})
    stages = {"harvest": {f"t={t}": str(s.dir) for t, s in zip(ts, harvests)}, "student": str(student.dir)}
    return Trained(final_checkpoint(student), stages, sft)


def rl_graph(cfg: DictConfig, base: ModelRef) -> Trained:
    rl = run_rl(cfg, base)
    return Trained(final_checkpoint(rl), {"rl": str(rl.dir)})


#: method.kind -> the stages that train its model from θ0 (a new kind of method adds its graph here)
GRAPHS: dict[str, Callable[[DictConfig, ModelRef], Trained]] = {"sft": sft_graph, "student": student_graph,
                                                                "rl": rl_graph}


def run(cfg: DictConfig, run_dir: str | Path, validated: bool = False) -> dict[str, Any]:
    """The whole pipeline for ``cfg.method``; writes ``results.json`` and ``pipeline.json`` into ``run_dir``.

    The config is validated first unless the caller did (``validated=True``). In a multi-process job
    (:func:`tms.core.distributed.session`) every rank calls it; rank 0 writes the run directory.
    """
    run_dir = Path(run_dir)
    if not validated:
        validate(cfg)
    distributed.require_session(cfg.trainer)
    kind = cfg.method.kind
    if kind not in GRAPHS:
        raise ValueError(f"method.kind={kind!r}: expected one of {sorted(GRAPHS)}")
    base = resolve_base(cfg)
    trained = GRAPHS[kind](cfg, base)
    sft, final = trained.sft, trained.final
    stages = {"base": base.path, **trained.stages, **({"sft": str(sft.dir)} if sft is not None else {})}
    base_res = run_eval(cfg, base, base)
    rows = {"base": summarize("base", base_res, base_res, cfg)}
    sft_ref = final_checkpoint(sft) if sft is not None else cached_sft_final(cfg, base)
    if sft_ref is not None and kind != "sft":
        rows["sft"] = summarize("sft", run_eval(cfg, sft_ref, base), base_res, cfg)
    rows[cfg.method.name] = summarize(cfg.method.name, run_eval(cfg, final, base), base_res, cfg)
    results = {**rows[cfg.method.name], "model": final.path, "seed": int(cfg.seed), "rows": rows,
               "suite": suite_names(cfg)}
    curve = None
    if sft is not None and cfg.get("eval_checkpoints"):  # SFT's checkpoint curve (target vs retention, KL, PLD per t)
        curve = checkpoint_curve(cfg, sft.dir / "checkpoints", base)
    if distributed.is_zero():
        write_json(run_dir / "results.json", results)
        write_json(run_dir / "pipeline.json", {"stages": stages, "final_model": final.path, "seed": int(cfg.seed)})
        if sft is not None:
            link(run_dir / "checkpoints", sft.dir / "checkpoints")
        if curve is not None:
            write_json(run_dir / "checkpoints.json", curve)
        link(run_dir / "model", Path(final.path))
    return results
