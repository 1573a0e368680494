"""The report's PNG plots (matplotlib, Agg backend); see :mod:`tms.evaluation.report`.

* ``pareto.png``: per target task, S_tgt against the mean retention score
  :math:`\\bar S_{ret} = \\frac{1}{|\\mathcal{T}_{ret}|}\\sum_b S_b` of every method, SFT's checkpoint
  curve t = 0 (θ0) .. T, and the Pareto frontier (points no other point beats on both axes).
* ``trajectory.png``: held-out PLD (eq. 4.2) and KL-to-base (target and retention prompts) against
  the SFT checkpoint index t.
* ``forgetting_vs_kl.png``: F (eq. 3.2) against KL-to-base on target prompts and on retention prompts.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def _ret_mean(row: dict, retention: Sequence[str]) -> float | None:
    return _mean(row["scores"].get(b) for b in retention)


def method_points(ents, task: str) -> list[dict[str, Any]]:
    """Per label, means over its runs on ``task``: target, mean retention, F and KL-to-base."""
    out = []
    for label in dict.fromkeys(e.label for e in ents if e.task == task):
        group = [e for e in ents if e.task == task and e.label == label]
        kl = {g: _mean(((e.row.get("kl_to_base") or {}).get(g) or {}).get("kl_seq") for e in group)
              for g in ("target", "retention")}
        retention = list(group[0].row.get("retention") or {})
        out.append({"label": label, "target": _mean(e.row["scores"].get(task) for e in group),
                    "retention": _mean(_ret_mean(e.row, retention) for e in group),
                    "forgetting": _mean(e.row.get("forgetting") for e in group), "kl": kl})
    return out


def curves(runs) -> list[dict[str, Any]]:
    """Distinct SFT checkpoint curves (``checkpoints.json``), each once."""
    seen, out = set(), []
    for run in runs:
        if run.curve and run.curve.get("checkpoints_dir") not in seen:
            seen.add(run.curve.get("checkpoints_dir"))
            out.append({**run.curve, "seed": run.results.get("seed")})
    return out


def trajectories(runs) -> list[dict[str, Any]]:
    """Distinct training-time PLD curves (``checkpoints/trajectory.json``) of runs without ``checkpoints.json``."""
    seen, out = {str(c.get("checkpoints_dir")) for c in curves(runs)}, []
    for run in runs:
        key = str((run.dir / "checkpoints").resolve())
        if run.trajectory and key not in seen:
            seen.add(key)
            out.append({**run.trajectory, "task": run.suite["target"], "seed": run.results.get("seed")})
    return out


def pareto_front(xy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by any other (higher is better on both axes), sorted by x."""
    pts = sorted(set(xy), key=lambda p: (-p[0], -p[1]))
    front, best_y = [], -math.inf
    for x, y in pts:
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def _colors(labels) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {lb: ("black" if lb == "base" else cmap(i % 10)) for i, lb in enumerate(dict.fromkeys(labels))}


def plot_pareto(runs, ents, tasks: Sequence[str], path: Path, scale: float) -> None:
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.6), squeeze=False)
    colors = _colors(e.label for e in ents)
    for ax, task in zip(axes[0], tasks):
        xy = []
        for c in (c for c in curves(runs) if c["suite"]["target"] == task):
            pts = [(p["retention_mean"] * scale, p["target"] * scale) for p in c["checkpoints"]]
            ax.plot(*zip(*pts), "-o", color="0.6", ms=3.5, lw=1.2, zorder=1,
                    label=f"SFT checkpoints t=0..{c['T']}" + (f" (seed {c['seed']})" if c.get("seed") else ""))
            for p, (x, y) in zip(c["checkpoints"], pts):
                ax.annotate(str(p["t"]), (x, y), fontsize=7, color="0.4", xytext=(3, 3), textcoords="offset points")
            xy += pts
        for p in method_points(ents, task):
            if p["target"] is None or p["retention"] is None:
                continue
            x, y = p["retention"] * scale, p["target"] * scale
            ax.scatter([x], [y], s=180 if p["label"] == "base" else 55, color=colors[p["label"]], zorder=3,
                       marker="*" if p["label"] == "base" else "o", label=p["label"], edgecolors="white")
            xy.append((x, y))
        if len(xy) > 1:
            ax.plot(*zip(*pareto_front(xy)), "--", color="tab:red", lw=1, alpha=0.6, zorder=2, label="Pareto frontier")
        unit = " (%)" if scale == 100 else ""
        ax.set(xlabel=f"mean retention score{unit}", ylabel=f"target score S_tgt{unit}", title=f"target: {task}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Target vs retention (upper right is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectory(runs, path: Path) -> None:
    fig, (ax_pld, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.2))
    for c in curves(runs):
        name = c["suite"]["target"] + (f", seed {c['seed']}" if c.get("seed") is not None else "")
        pts = [(p["t"], (p.get("pld") or {}).get("pld")) for p in c["checkpoints"]]
        line = ax_pld.plot(*zip(*[q for q in pts if q[1] is not None]), "-o", ms=3.5, label=f"held-out PLD ({name})")[0]
        train = [(p["t"], p["pld_train"]["pld"]) for p in c["checkpoints"] if p.get("pld_train")]
        if train:
            ax_pld.plot(*zip(*train), ":", color=line.get_color(), label=f"logged during SFT ({name})")
        for group, style in (("target", "-o"), ("retention", "--s")):
            kl = [(p["t"], ((p.get("kl_to_base") or {}).get(group) or {}).get("kl_seq")) for p in c["checkpoints"]]
            kl = [q for q in kl if q[1] is not None]
            if kl:
                ax_kl.plot(*zip(*kl), style, ms=3.5, label=f"{group} prompts ({name})")
    for tr in trajectories(runs):
        pts = sorted((int(t), e["pld"]) for t, e in tr["checkpoints"].items() if e.get("pld") is not None)
        if pts:
            ax_pld.plot(*zip(*pts), "-o", ms=3.5, label=f"PLD logged during SFT ({tr['task']}, seed {tr['seed']})")
    if not ax_kl.lines:
        ax_kl.text(0.5, 0.5, "no per-checkpoint evaluation\n(python evaluate.py checkpoints_of=<SFT run dir>)",
                   ha="center", va="center", transform=ax_kl.transAxes, fontsize=9, color="0.4")
    if not ax_pld.lines:
        ax_pld.text(0.5, 0.5, "no SFT checkpoints in these runs", ha="center", va="center",
                    transform=ax_pld.transAxes, fontsize=9, color="0.4")
    ax_pld.set(xlabel="SFT checkpoint t (0 = θ0)", ylabel="validation NLL of references (nats / sequence)",
               title="Held-out PLD (eq. 4.2)")
    ax_kl.set(xlabel="SFT checkpoint t (0 = θ0)", ylabel="KL(π_t ‖ π_0) (nats / sequence)", title="KL to base")
    for ax in (ax_pld, ax_kl):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_forgetting_vs_kl(runs, ents, tasks: Sequence[str], path: Path, scale: float) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = _colors(e.label for e in ents)
    multi = len(tasks) > 1
    for ax, group in zip(axes, ("target", "retention")):
        for c in curves(runs):
            pts = [(((p.get("kl_to_base") or {}).get(group) or {}).get("kl_seq"), p.get("forgetting"))
                   for p in c["checkpoints"]]
            pts = [(x, y * scale) for x, y in pts if x is not None and y is not None]
            if pts:
                ax.plot(*zip(*pts), "-o", color="0.6", ms=3, lw=1, zorder=1, label=f"SFT t=0..{c['T']}")
        for task in tasks:
            for p in method_points(ents, task):
                x, y = p["kl"][group], p["forgetting"]
                if x is None or y is None:
                    continue
                ax.scatter([x], [y * scale], color=colors[p["label"]], s=160 if p["label"] == "base" else 50, zorder=3,
                           edgecolors="white",
                           marker="*" if p["label"] == "base" else "o",
                           label=f"{p['label']} ({task})" if multi else p["label"])
        ax.set(xlabel=f"KL-to-base on {group} prompts (nats / sequence)",
               ylabel="forgetting F" + (" (points)" if scale == 100 else ""), title=f"F vs KL ({group} prompts)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            uniq = dict(zip(labels, handles))
            ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.suptitle("Forgetting vs drift from θ0 (F ≤ 0; closer to 0 is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(runs, ents, tasks: Sequence[str], out: Path, scale: float = 100.0) -> dict[str, Path]:
    """Write the three PNGs into ``out``; returns ``{file name: path}``."""
    files = {"pareto.png": out / "pareto.png", "trajectory.png": out / "trajectory.png",
             "forgetting_vs_kl.png": out / "forgetting_vs_kl.png"}
    plot_pareto(runs, ents, tasks, files["pareto.png"], scale)
    plot_trajectory(runs, files["trajectory.png"])
    plot_forgetting_vs_kl(runs, ents, tasks, files["forgetting_vs_kl.png"], scale)
    return files
