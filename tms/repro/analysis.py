r"""The numbers of the toy reproduction report, computed from :class:`tms.repro.data.Results` (pure functions).

* :func:`mean_se`: mean and standard error :math:`s/\sqrt n` (ddof = 1) over seeds; n = 1 has no SE.
* :func:`envelope` / :func:`gain_over_curve`: a method's *retention gain over SFT's curve at its own
  target accuracy*. SFT's curve of one seed is the path θ0 (t = 0) → checkpoint 1 → ... → T in the
  (target, retention) plane, ordered by t and joined by straight segments. Target accuracy need not rise
  monotonically along it, so the path can cross a vertical line x = S_tgt several times; we take the
  **upper envelope**: the highest retention at which the path crosses x, i.e. the best retention SFT
  reached *at exactly that target accuracy* at any point of its (linearly interpolated) training run. On a
  monotone curve this is ordinary linear interpolation. ``gain = retention(method) − envelope(target of
  the method)``. Outside [min, max] of the curve's target accuracies the gain is **not defined** (no
  extrapolation); the table says so. A method that merely trains less than SFT lands on the curve (gain ≈
  0); a positive gain is retention SFT never had at that accuracy.
* :func:`linear_fit`: least squares y = a + b·x and :math:`R^2 = 1 - SS_{res}/SS_{tot}`.
* :func:`aggregate`, :func:`gains`, :func:`predictor_fits`, :func:`ablation_groups` / :func:`ablation_rows`:
  the same applied to the rows (per method over seeds, per seed against its own SFT curve, per ablation);
  :func:`analyse` computes all of it once into an :class:`Analysis`.

Unit-tested in ``tests/test_repro_report.py``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tms.evaluation.metrics import stderr
from tms.repro.data import KL_COLUMNS, Results, sft_t

#: predictors of F in the "does KL / PLD predict forgetting" table
PREDICTORS = KL_COLUMNS + ("pld",)
#: the main TMS point of every ablation (the driver's defaults; ``meta["main"]`` overrides)
MAIN_DEFAULTS = {"p_t": "uniform", "T": 10, "alpha": 0.25}
EPS = 1e-12


@dataclass(frozen=True)
class Stat:
    """Mean ± standard error over n values; ``se`` is None when n < 2 (and for a missing value)."""

    mean: float | None
    se: float | None
    n: int

    @classmethod
    def exact(cls, value: float) -> Stat:
        """A known constant (e.g. 0 for "no forgetting"): SE 0."""
        return cls(float(value), 0.0, 0)


def finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_se(values: Iterable[float | None]) -> Stat:
    """Mean and SE = std(ddof=1)/√n of the non-missing values (:func:`tms.evaluation.metrics.stderr`)."""
    vals = finite(values)
    if not vals:
        return Stat(None, None, 0)
    return Stat(math.fsum(vals) / len(vals), stderr(vals) if len(vals) > 1 else None, len(vals))


def envelope(curve: Sequence[tuple[float, float]], x: float) -> float | None:
    """Upper envelope of the piecewise-linear path ``curve`` [(target, retention), ...] (in t order) at x.

    The highest retention among all points of the path whose target accuracy is exactly x (each segment
    that spans x contributes its linear interpolation; a vertical segment at x its higher end). None when
    x is outside [min, max] of the curve's targets (no extrapolation) or the curve is empty.
    """
    if not curve:
        return None
    if len(curve) == 1:
        return float(curve[0][1]) if abs(x - curve[0][0]) <= EPS else None
    best = None
    for (x1, y1), (x2, y2) in zip(curve, curve[1:]):
        lo, hi = min(x1, x2), max(x1, x2)
        if x < lo - EPS or x > hi + EPS:
            continue
        if hi - lo <= EPS:
            y = max(y1, y2)
        else:
            w = min(max((x - x1) / (x2 - x1), 0.0), 1.0)
            y = y1 + w * (y2 - y1)
        best = y if best is None else max(best, y)
    return best


@dataclass(frozen=True)
class Gain:
    """A method's retention minus SFT's (enveloped) retention at the method's target; ``reason`` when undefined."""

    gain: float | None
    sft_retention: float | None
    reason: str = ""


def gain_over_curve(target: float | None, retention: float | None, curve: Sequence[tuple[float, float]]) -> Gain:
    """``retention − envelope(curve, target)`` (see :func:`envelope`); undefined outside the curve's target range."""
    if target is None or retention is None:
        return Gain(None, None, "target or retention missing")
    if not curve:
        return Gain(None, None, "no SFT checkpoint curve for this seed")
    at = envelope(curve, target)
    if at is None:
        lo, hi = min(p[0] for p in curve), max(p[0] for p in curve)
        side = "below" if target < lo else "above"
        return Gain(None, None, f"target {target:.3f} {side} SFT's curve range [{lo:.3f}, {hi:.3f}]")
    return Gain(retention - at, at)


@dataclass(frozen=True)
class Fit:
    """Least-squares line y = intercept + slope·x over n points; None where undefined (n < 2, constant x or y)."""

    slope: float | None
    intercept: float | None
    r2: float | None
    n: int


def linear_fit(xs: Sequence[float | None], ys: Sequence[float | None]) -> Fit:
    """Ordinary least squares of y on x over the pairs where both are present; R² = 1 − SS_res / SS_tot."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None
           and math.isfinite(float(x)) and math.isfinite(float(y))]
    n = len(pts)
    if n < 2:
        return Fit(None, None, None, n)
    mx = math.fsum(p[0] for p in pts) / n
    my = math.fsum(p[1] for p in pts) / n
    sxx = math.fsum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return Fit(None, None, None, n)
    slope = math.fsum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope * mx
    ss_tot = math.fsum((y - my) ** 2 for _, y in pts)
    ss_res = math.fsum((y - intercept - slope * x) ** 2 for x, y in pts)
    return Fit(slope, intercept, 1.0 - ss_res / ss_tot if ss_tot > 0 else None, n)


def sft_curve(res: Results, seed: int, setting: str = "main") -> list[tuple[int, float, float]]:
    """SFT's checkpoint curve of ``seed``: [(t, target, retention_mean)] for θ0 (t = 0) and t = 1..T, by t."""
    pts = [(0, r["target"], r["retention_mean"]) for r in res.select("base", setting, [seed])]
    pts += [(r["t"], r["target"], r["retention_mean"]) for r in res.rows if r["setting"] == setting
            and r["seed"] == seed and sft_t(r["method"]) is not None and r["t"] is not None]
    return sorted((p for p in pts if p[1] is not None and p[2] is not None), key=lambda p: p[0])


def curves(res: Results, seeds: Iterable[int]) -> dict[int, list[tuple[float, float]]]:
    """Per seed, the (target, retention) path of :func:`sft_curve`; seeds without SFT checkpoints get []."""
    out = {}
    for s in seeds:
        c = sft_curve(res, s)
        out[s] = [(x, y) for t, x, y in c] if any(t > 0 for t, _, _ in c) else []
    return out


def gains(res: Results, method: str, setting: str, seeds: Iterable[int],
          curve_of: Mapping[int, Sequence[tuple[float, float]]]) -> list[dict[str, Any]]:
    """One record per seed that has a (method, setting) row: its target, retention and :class:`Gain`."""
    out = []
    for r in sorted(res.select(method, setting, seeds), key=lambda r: r["seed"]):
        g = gain_over_curve(r["target"], r["retention_mean"], curve_of.get(r["seed"], []))
        out.append({"method": method, "setting": setting, "seed": r["seed"], "target": r["target"],
                    "retention_mean": r["retention_mean"], "sft_retention_at_target": g.sft_retention,
                    "gain": g.gain, "defined": g.gain is not None, "reason": g.reason})
    return out


def aggregate(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, Stat]:
    """:func:`mean_se` of each column over ``rows`` (the seeds)."""
    return {c: mean_se(r.get(c) for r in rows) for c in columns}


def predictor_fits(res: Results, y: str = "F") -> dict[str, Fit]:
    """F against each predictor over every row with both values (methods, SFT checkpoints, all settings)."""
    return {p: linear_fit([r[p] for r in res.rows], [r[y] for r in res.rows]) for p in PREDICTORS}


def parse_setting(setting: str) -> tuple[str, str | None]:
    """``"T=4"`` → ("T", "4"); ``"correct_only"`` → ("correct_only", None)."""
    key, eq, value = setting.partition("=")
    return (key.strip(), value.strip()) if eq else (setting.strip(), None)


def _num_key(v: str) -> tuple:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def ablation_groups(res: Results, main: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ablations present among the TMS rows: [{key, title, levels: [(label, setting)]}], the main
    setting placed at its value (``main``: the main run's p_t, T, alpha; default :data:`MAIN_DEFAULTS`)."""
    main = {**MAIN_DEFAULTS, **(main or {})}
    settings = list(dict.fromkeys(r["setting"] for r in res.rows if r["method"] == "tms" and r["setting"] != "main"))
    by_key: dict[str, list[tuple[str | None, str]]] = {}
    for s in settings:
        k, v = parse_setting(s)
        by_key.setdefault(k, []).append((v, s))
    titles = {"p_t": "RQ9: checkpoint sampling p(t)", "T": "RQ10: number of checkpoints T",
              "alpha": "mixing weight α", "correct_only": "correct-only vs all harvested samples"}
    groups = []
    for k, levels in by_key.items():
        if k == "correct_only" or all(v is None for v, _ in levels):
            named = [("all samples (main)", "main")] + [(s.replace("_", " "), s) for _, s in levels]
        else:
            vals = [(str(v), s) for v, s in levels if v is not None]
            if k in main:
                vals.append((f"{main[k]} (main)", "main"))
            if k == "p_t":
                order = {"early": 0, "uniform": 1, "late": 2}
                vals.sort(key=lambda p: (order.get(p[0].split(" ")[0], 3), p[0]))
            else:
                vals.sort(key=lambda p: _num_key(p[0].split(" ")[0]))
            named = vals
        groups.append({"key": k, "title": titles.get(k, f"ablation `{k}`"), "levels": named})
    order = ["p_t", "T", "alpha", "correct_only"]
    return sorted(groups, key=lambda g: order.index(g["key"]) if g["key"] in order else len(order))


def ablation_seeds(res: Results) -> list[int]:
    """The seeds the ablations ran on (seed 0 in the driver)."""
    return sorted({r["seed"] for r in res.rows if r["method"] == "tms" and r["setting"] != "main"
                   and r["seed"] is not None})


def ablation_rows(res: Results, group: Mapping[str, Any], seeds: Sequence[int],
                  curve_of: Mapping[int, Sequence[tuple[float, float]]]) -> list[dict[str, Any]]:
    """Per level of an ablation: Stats over ``seeds`` of target, retention, F, kl_fwd_target and the gain."""
    out = []
    for label, setting in group["levels"]:
        rows = res.select("tms", setting, seeds)
        g = gains(res, "tms", setting, seeds, curve_of)
        rec = {"label": label, "setting": setting, "n": len(rows),
               **aggregate(rows, ("target", "retention_mean", "F", "kl_fwd_target")),
               "gain": mean_se(x["gain"] for x in g), "undefined": [f"seed {x['seed']}: {x['reason']}"
                                                                   for x in g if not x["defined"]]}
        out.append(rec)
    return out


@dataclass
class Analysis:
    """Everything the report shows, computed once from the results (see :func:`analyse`)."""

    res: Results
    seeds: list[int]
    methods: list[str]
    curve_of: dict[int, list[tuple[float, float]]]
    stats: dict[str, dict[str, Stat]]
    n_seeds: dict[str, int]
    gain_recs: dict[str, list[dict[str, Any]]]
    gain_stats: dict[str, Stat]
    fits: dict[str, Fit]
    abl_seeds: list[int]
    groups: list[dict[str, Any]]
    abl: dict[str, list[dict[str, Any]]]


def analyse(res: Results, main: Mapping[str, Any] | None = None) -> Analysis:
    """Stats per method (setting main), gains over SFT's curve, the predictor fits and the ablations."""
    seeds, methods = res.seeds(), res.methods()
    curve_of = curves(res, seeds)
    gain_recs = {m: gains(res, m, "main", seeds, curve_of) for m in methods if m != "base"}
    abl_seeds, groups = ablation_seeds(res), ablation_groups(res, main)
    return Analysis(res, seeds, methods, curve_of,
                    stats={m: aggregate(res.select(m, "main"), res.metrics) for m in methods},
                    n_seeds={m: len(res.select(m, "main")) for m in methods}, gain_recs=gain_recs,
                    gain_stats={m: mean_se(g["gain"] for g in recs) for m, recs in gain_recs.items()},
                    fits=predictor_fits(res), abl_seeds=abl_seeds, groups=groups,
                    abl={g["key"]: ablation_rows(res, g, abl_seeds, curve_of) for g in groups})
