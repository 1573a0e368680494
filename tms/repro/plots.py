"""The PNGs of the toy reproduction report (:mod:`tms.repro.report`); matplotlib, Agg backend.

* ``plane.png``: target accuracy (x) vs mean retention (y): SFT's checkpoint curve per seed and its seed mean,
  every method per seed and as mean ± SE; a second panel places the TMS ablations on their seed's SFT curve.
* ``forgetting_vs_kl.png``: F against KL(π0‖π) and KL(π‖π0) on target prompts, least-squares line and R².
* ``buffer.png``: accuracy, format shares and the student's PLD per harvested checkpoint t.
* ``T.png``: target, retention and gain over SFT's curve against the number of checkpoints T.

Colours follow :func:`tms.evaluation.plots._colors` (θ0 black, the methods tab10), as in the run reports.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from tms.evaluation.plots import _colors, plt
from tms.repro.analysis import Fit, Stat, sft_curve
from tms.repro.data import sft_t
from tms.repro.formatting import name


def _val(s: Stat | None) -> float:
    return math.nan if s is None or s.mean is None else s.mean


def _err(s: Stat | None) -> float:
    return 0.0 if s is None or s.se is None else s.se


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")


def _sft_paths(ax, res, seeds: Sequence[int], mean: bool = True) -> None:
    """Each seed's θ0 → t = 1..T path (thin), dotted to the final SFT model, and the mean over seeds per t (thick)."""
    by_t: dict[int, list[tuple[float, float]]] = {}
    for i, s in enumerate(seeds):
        pts = sft_curve(res, s)
        if len(pts) < 2:
            continue
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "-", color="0.6", lw=0.8, alpha=0.8, zorder=1,
                label="SFT curve, per seed" if i == 0 else None)
        end = res.select("sft", "main", [s])
        if end and end[0]["target"] is not None and end[0]["retention_mean"] is not None:
            ax.plot([pts[-1][1], end[0]["target"]], [pts[-1][2], end[0]["retention_mean"]], ":", color="0.6", lw=0.8)
        for t, x, y in pts:
            by_t.setdefault(t, []).append((x, y))
    if mean and len(seeds) > 1 and by_t:
        ts = sorted(by_t)
        xs = [sum(p[0] for p in by_t[t]) / len(by_t[t]) for t in ts]
        ys = [sum(p[1] for p in by_t[t]) / len(by_t[t]) for t in ts]
        ax.plot(xs, ys, "-o", color="0.25", lw=2.2, ms=3, zorder=2, label="SFT curve, seed mean")
        for t, x, y in zip(ts, xs, ys):
            ax.annotate(str(t), (x, y), fontsize=7, color="0.3", xytext=(3, 3), textcoords="offset points")


def plot_plane(res, methods: Sequence[str], curve_of: Mapping[int, Any], stats: Mapping[str, Mapping[str, Stat]],
               path: Path, abl_seeds: Sequence[int] = (), abl: Mapping[str, Sequence[Mapping]] | None = None) -> None:
    """Target (x) vs mean retention (y); see the module docstring."""
    panels = 2 if abl else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 5.0), squeeze=False)
    ax = axes[0][0]
    seeds = sorted(curve_of)
    _sft_paths(ax, res, seeds)
    colors = _colors(methods)
    for m in methods:
        rows = [r for r in res.select(m, "main") if r["target"] is not None and r["retention_mean"] is not None]
        star = m == "base"
        ax.scatter([r["target"] for r in rows], [r["retention_mean"] for r in rows], s=14, color=colors[m],
                   alpha=0.5, zorder=3, marker="*" if star else "o")
        st = stats.get(m, {})
        if rows:
            ax.errorbar([_val(st.get("target"))], [_val(st.get("retention_mean"))], xerr=[_err(st.get("target"))],
                        yerr=[_err(st.get("retention_mean"))], fmt="*" if star else "o", ms=13 if star else 8,
                        color=colors[m], mec="white", capsize=3, zorder=4, label=name(m))
    ax.set(xlabel="target accuracy S_tgt", ylabel="mean retention accuracy",
           title=f"Main comparison (seeds {', '.join(map(str, seeds))})")
    if not ax.collections and not ax.lines:
        _empty(ax, "no rows with target and retention")
    if abl:
        ax2 = axes[0][1]
        _sft_paths(ax2, res, list(abl_seeds), mean=False)
        cmap = plt.get_cmap("tab10")
        main_done = False
        for i, (key, recs) in enumerate(abl.items()):
            labelled = False
            for r in recs:
                x, y = _val(r["target"]), _val(r["retention_mean"])
                if math.isnan(x) or math.isnan(y) or (r["setting"] == "main" and main_done):
                    continue
                is_main = r["setting"] == "main"
                main_done |= is_main
                ax2.scatter([x], [y], color="black" if is_main else cmap(i % 10), s=50 if is_main else 30, zorder=3,
                            marker="s" if is_main else "o",
                            label="TMS main setting" if is_main else (None if labelled else key))
                labelled |= not is_main
                text = "main" if is_main else (r["label"] if key == "correct_only" else f"{key}={r['label']}")
                ax2.annotate(text, (x, y), fontsize=6.5, xytext=(3, 2), textcoords="offset points")
        ax2.set(xlabel="target accuracy S_tgt", ylabel="mean retention accuracy",
                title=f"TMS ablations (seed {', '.join(map(str, abl_seeds))}) on that seed's SFT curve")
    for a in axes[0]:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, loc="best")
    _save(fig, path, "Target vs retention (upper right is better; above SFT's curve = retention SFT never had there)")


def _save(fig, path: Path, title: str | None = None) -> None:
    """Title, tight layout, write ``path`` (120 dpi) and free the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _kind(row) -> str:
    if sft_t(row["method"]) is not None:
        return "SFT checkpoints"
    if row["setting"] != "main":
        return "TMS ablations"
    return row["method"]


def plot_forgetting_vs_kl(res, fits: Mapping[str, Fit], path: Path) -> None:
    """F against the forward and the reverse KL on target prompts, every row with both values."""
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6))
    methods = res.methods()
    colors = {**_colors(methods), "SFT checkpoints": "0.6", "TMS ablations": "tab:olive"}
    titles = {"kl_fwd_target": "F vs KL(π0 ‖ π) on target prompts (RL's Razor)",
              "kl_rev_target": "F vs KL(π ‖ π0) on target prompts (KL-to-base, Fig. 2a)"}
    for ax, p in zip(axes, ("kl_fwd_target", "kl_rev_target")):
        pts = [(r[p], r["F"], _kind(r)) for r in res.rows if r[p] is not None and r["F"] is not None]
        for kind in dict.fromkeys(k for _, _, k in pts):
            xy = [(x, y) for x, y, k in pts if k == kind]
            ax.scatter(*zip(*xy), s=16 if kind == "SFT checkpoints" else 36, color=colors.get(kind, "tab:gray"),
                       marker="*" if kind == "base" else ("D" if kind == "TMS ablations" else "o"),
                       zorder=2 if kind == "SFT checkpoints" else 3, edgecolors="white", linewidths=0.4,
                       label=name(kind))
        f = fits.get(p)
        if f and f.slope is not None:
            xs = [x for x, _, _ in pts]
            lo, hi = min(xs), max(xs)
            ax.plot([lo, hi], [f.intercept + f.slope * lo, f.intercept + f.slope * hi], "--", color="tab:red", lw=1.2,
                    label="least squares")
            r2 = "undefined" if f.r2 is None else f"{f.r2:.3f}"
            ax.text(0.98, 0.97, f"F = {f.intercept:.3f} + {f.slope:.4f}·x\nR² = {r2} (n = {f.n})",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        if not pts:
            _empty(ax, f"no rows with {p} and F")
        ax.set(xlabel=f"{p} (nats / sequence)", ylabel="forgetting F (eq. 3.2)", title=titles[p])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    _save(fig, path, "Forgetting vs drift from θ0 (F ≤ 0; closer to 0 is better)")


def plot_buffer(buf, path: Path, setting: str | None = None) -> None:
    """Accuracy (per seed thin, mean thick), format shares and the student's PLD against t, for one setting."""
    settings = list(dict.fromkeys(r["setting"] for r in buf.rows))
    setting = setting or ("main" if "main" in settings else settings[0])
    rows = [r for r in buf.rows if r["setting"] == setting]
    shares = [c for c in buf.columns if c.startswith("share_")]
    panels = [("accuracy", ["accuracy", "finished"]), ("format shares", shares), ("student PLD", ["student_pld"])]
    panels = [(t, [c for c in cols if c in buf.columns]) for t, cols in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.0), squeeze=False)
    ts = sorted({r["t"] for r in rows})
    for ax, (title, cols) in zip(axes[0], panels):
        for c in cols:
            mean = []
            for t in ts:
                vals = [r[c] for r in rows if r["t"] == t and r[c] is not None]
                mean.append(sum(vals) / len(vals) if vals else math.nan)
            line = ax.plot(ts, mean, "-o", ms=3.5, lw=2, label=c.replace("share_", ""))[0]
            if c == "accuracy":
                for s in sorted({r["seed"] for r in rows}):
                    pts = sorted((r["t"], r[c]) for r in rows if r["seed"] == s and r[c] is not None)
                    if pts:
                        ax.plot(*zip(*pts), "-", lw=0.7, alpha=0.5, color=line.get_color())
        if not cols:
            _empty(ax, f"no {title} columns")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="harvested checkpoint t (0 = θ0)", title=title,
               ylabel="NLL (nats / sequence)" if title == "student PLD" else "fraction")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path, f"Harvest buffer H per checkpoint (setting {setting})")


def plot_T(recs: Sequence[Mapping], path: Path) -> None:
    """Target and retention (left) and gain over SFT's curve (right) against T (RQ10, Fig. 4)."""
    pts = []
    for r in recs:
        try:
            pts.append((float(r["label"].split(" ")[0]), r))
        except ValueError:
            continue
    pts.sort(key=lambda p: p[0])
    fig, (ax, ax_g) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    xs = [t for t, _ in pts]
    for key, label in (("target", "target accuracy"), ("retention_mean", "mean retention")):
        ax.errorbar(xs, [_val(r[key]) for _, r in pts], yerr=[_err(r[key]) for _, r in pts], fmt="-o", ms=4,
                    capsize=3, label=label)
    ax_g.errorbar(xs, [_val(r["gain"]) for _, r in pts], yerr=[_err(r["gain"]) for _, r in pts], fmt="-o", ms=4,
                  capsize=3, color="tab:green", label="gain over SFT's curve")
    ax_g.axhline(0, color="0.5", lw=0.8)
    for t, r in pts:
        if "main" in r["label"]:
            for a in (ax, ax_g):
                a.axvline(t, color="0.8", lw=0.8, ls=":")
    ax.set(xlabel="number of checkpoints T", ylabel="accuracy", title="TMS target and retention vs T")
    ax_g.set(xlabel="number of checkpoints T", ylabel="retention − SFT's at the same target",
             title="Retention gain over SFT's curve vs T")
    for a in (ax, ax_g):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    _save(fig, path)
