r"""The claims of the toy reproduction, (a)–(g), and the rule that decides each verdict.

* :func:`compare` / :func:`verdict`: the rule for every claim. A difference counts when
  :math:`|a-b| > 2\sqrt{SE_a^2 + SE_b^2}`; with one seed (no SE) or missing data a claim is
  "inconclusive (n=1)" / "inconclusive (missing data)", whatever the point estimates say.
* :func:`combine`: a claim made of several comparisons; :func:`fit_verdict`: whether a predictor predicts F.
* :func:`claims`: every claim of an :class:`tms.repro.analysis.Analysis` with its verdict and evidence.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tms.repro.analysis import PREDICTORS, Analysis, Fit, Stat, mean_se
from tms.repro.formatting import col_name, fmt_num, name

RL_METHODS = ("grpo", "reinforce")
#: the rule: a difference counts when it exceeds K_SE combined standard errors
K_SE = 2.0
#: a predictor "predicts" F when its fit has R² >= R2_PREDICTS and a negative slope over >= MIN_POINTS rows;
#: it "fails" when R² < R2_FAILS or the slope is >= 0
R2_PREDICTS, R2_FAILS, MIN_POINTS = 0.5, 0.25, 5


@dataclass(frozen=True)
class Comparison:
    """a − b against the rule: sign +1 / −1 when |a − b| > K_SE·√(SE_a² + SE_b²), 0 within it, None undecidable."""

    sign: int | None
    diff: float | None
    se: float | None
    reason: str = ""


def compare(a: Stat, b: Stat, k: float = K_SE) -> Comparison:
    """Apply the rule to a − b (see :class:`Comparison`); one seed on either side → ``reason="n=1"``."""
    if a.mean is None or b.mean is None:
        return Comparison(None, None, None, "missing data")
    diff = a.mean - b.mean
    if a.se is None or b.se is None:
        return Comparison(None, diff, None, "n=1")
    se = math.sqrt(a.se ** 2 + b.se ** 2)
    return Comparison((1 if diff > 0 else -1) if abs(diff) > k * se else 0, diff, se)


def verdict(cmp: Comparison, expect: int = 1) -> str:
    """"reproduced" when the difference counts in the claimed direction ``expect``, "contradicted" when it
    counts against it, else "inconclusive (<why>)"."""
    if cmp.sign is None:
        return f"inconclusive ({cmp.reason})"
    if cmp.sign == 0:
        return f"inconclusive (within {K_SE:g} combined SE)"
    return "reproduced" if cmp.sign == expect else "contradicted"


def combine(verdicts: Sequence[str]) -> str:
    """All parts of a claim: any contradicted → contradicted; all reproduced → reproduced; else inconclusive."""
    if not verdicts:
        return "inconclusive (missing data)"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    reasons = list(dict.fromkeys(v[len("inconclusive ("):-1] for v in verdicts if v.startswith("inconclusive (")))
    return f"inconclusive ({'; '.join(reasons)})"


def fit_verdict(fit: Fit) -> str:
    """Whether a predictor predicts F (see R2_PREDICTS, R2_FAILS, MIN_POINTS): more drift ↔ more negative F."""
    if fit.n < MIN_POINTS or fit.r2 is None or fit.slope is None:
        return f"inconclusive ({fit.n} points{'' if fit.n < MIN_POINTS else ', no variance'})"
    if fit.slope < 0 and fit.r2 >= R2_PREDICTS:
        return "reproduced"
    if fit.slope >= 0 or fit.r2 < R2_FAILS:
        return "contradicted"
    return f"inconclusive ({R2_FAILS:g} ≤ R² < {R2_PREDICTS:g})"


def _say(s: Stat, digits: int = 3) -> str:
    """A Stat inside a sentence: ``0.512 ± 0.013 (n=3)``."""
    if s.mean is None:
        return "missing"
    return f"{s.mean:.{digits}f}" + (f" ± {s.se:.{digits}f}" if s.se is not None else "") + f" (n={s.n})"


def _cmp_text(cmp: Comparison) -> str:
    if cmp.diff is None:
        return "difference: missing"
    if cmp.se is None:
        return f"difference {cmp.diff:+.3f}, no SE"
    if cmp.se == 0:
        return f"difference {cmp.diff:+.3f}, combined SE 0"
    return f"difference {cmp.diff:+.3f}, {abs(cmp.diff) / cmp.se:.1f} combined SE"


@dataclass
class Claim:
    key: str
    text: str
    verdict: str
    evidence: str

    def markdown(self) -> str:
        return f"- **({self.key}) {self.text}: {self.verdict}.** {self.evidence}"


MISSING = Stat(None, None, 0)


def _stat(a: Analysis, method: str, col: str) -> Stat:
    return a.stats.get(method, {}).get(col, MISSING)


def _undefined(a: Analysis, method: str) -> list[str]:
    return [f"seed {g['seed']}: {g['reason']}" for g in a.gain_recs.get(method, []) if not g["defined"]]


def claim_sft_forgets(a: Analysis) -> Claim:
    """(a) F(SFT) < 0 beyond noise; contradicted when no skill dropped on any seed (F = 0 everywhere)."""
    f_sft = _stat(a, "sft", "F")
    cmp = compare(f_sft, Stat.exact(0.0))
    v = verdict(cmp, -1)
    rows = [r for r in a.res.select("sft", "main") if r["F"] is not None]
    if cmp.sign == 0 and rows and all(r["F"] == 0 for r in rows):
        v = "contradicted"
    return Claim("a", "SFT forgets (F < 0)", v,
                 f"F(SFT) = {_say(f_sft)}; vs 0: {_cmp_text(cmp)}. Mean retention "
                 f"{_say(_stat(a, 'sft', 'retention_mean'))} against θ0's {_say(_stat(a, 'base', 'retention_mean'))}.")


def claim_rl_forgets_least(a: Analysis) -> Claim:
    """(b) The best RL method's gain over SFT's curve exceeds every other method's; also: did RL reach SFT's target?"""
    rl = [m for m in RL_METHODS if m in a.stats]
    others = [m for m in a.gain_stats if m not in RL_METHODS and a.gain_stats[m].mean is not None]
    tgt_sft = _stat(a, "sft", "target")
    words = []
    for m in rl:
        tc = compare(_stat(a, m, "target"), tgt_sft)
        reach = {1: "higher than SFT's", -1: "lower than SFT's", 0: "comparable to SFT's"}.get(
            tc.sign, f"not comparable by the rule ({tc.reason}) to SFT's")
        und = _undefined(a, m)
        words.append(f"{name(m)}: gain {_say(a.gain_stats.get(m, MISSING))}"
                     + (f", undefined on {len(und)} seed(s) ({'; '.join(und)})" if und else "")
                     + f"; target {_say(_stat(a, m, 'target'))}, {reach} {_say(tgt_sft)}")
    rl_defined = [m for m in rl if a.gain_stats.get(m, MISSING).mean is not None]
    if not rl:
        v = "inconclusive (no RL rows)"
    elif not rl_defined:
        v = "inconclusive (RL's target outside SFT's curve on every seed: no matched-target comparison)"
    elif not others:
        v = "inconclusive (no other method with a defined gain)"
    else:
        best = max(rl_defined, key=lambda m: a.gain_stats[m].mean)
        parts = []
        for m in others:
            c = compare(a.gain_stats[best], a.gain_stats[m])
            parts.append(verdict(c, 1))
            words.append(f"{name(best)} − {name(m)} ({_say(a.gain_stats[m])}): {_cmp_text(c)} → {parts[-1]}")
        v = combine(parts)
    return Claim("b", "RL forgets least at matched target (gain over SFT's curve: best RL > every other method)", v,
                 ". ".join(words) + "." if words else "No GRPO/REINFORCE rows.")


def claim_tms_gain(a: Analysis) -> Claim:
    """(c) TMS's gain over SFT's curve > 0 beyond noise."""
    g = a.gain_stats.get("tms", MISSING)
    cmp = compare(g, Stat.exact(0.0))
    und = _undefined(a, "tms")
    return Claim("c", "TMS retains more than SFT at matched target (gain over SFT's curve > 0)", verdict(cmp, 1),
                 f"TMS gain {_say(g)}; vs 0: {_cmp_text(cmp)}" + (f"; undefined on {'; '.join(und)}" if und else "")
                 + f"; TMS target {_say(_stat(a, 'tms', 'target'))} vs SFT's {_say(_stat(a, 'sft', 'target'))}.")


def claim_tms_beats_distillation(a: Analysis) -> Claim:
    """(d) TMS > Self-SFT and > Final-SFT, on the gain and on target accuracy (four comparisons, all must hold)."""
    parts, words = [], []
    for m in ("self_sft", "final_sft"):
        for what, x, y in (("gain", a.gain_stats.get("tms", MISSING), a.gain_stats.get(m, MISSING)),
                           ("target", _stat(a, "tms", "target"), _stat(a, m, "target"))):
            c = compare(x, y)
            parts.append(verdict(c, 1))
            words.append(f"{what}: TMS {_say(x)} vs {name(m)} {_say(y)}, {_cmp_text(c)} → {parts[-1]}")
    return Claim("d", "TMS beats Self-SFT and Final-SFT (gain over SFT's curve and target)", combine(parts),
                 "; ".join(words) + ".")


def _fit_text(f: Fit, p: str) -> str:
    return f"{col_name(p)}: R² = {fmt_num(f.r2)}, slope {fmt_num(f.slope)}, n = {f.n}"


def claim_drift_predicts(a: Analysis) -> list[Claim]:
    """(e) KL on target prompts (forward or reverse) predicts F by :func:`fit_verdict`; (e′) the same for PLD."""
    usable = [p for p, f in a.fits.items() if f.r2 is not None and f.slope is not None and f.slope < 0
              and f.n >= MIN_POINTS]
    best = max(usable, key=lambda p: a.fits[p].r2, default=None)
    kl = [fit_verdict(a.fits[p]) for p in ("kl_fwd_target", "kl_rev_target")]
    if "reproduced" in kl:
        v = "reproduced"
    elif all(x == "contradicted" for x in kl):
        v = "contradicted"
    else:
        v = combine([x for x in kl if x != "contradicted"])
    return [Claim("e", "KL to θ0 on target prompts (forward or reverse) predicts forgetting", v,
                  f"Rule: R² ≥ {R2_PREDICTS:g} with a negative slope over ≥ {MIN_POINTS} rows predicts, R² < "
                  f"{R2_FAILS:g} or slope ≥ 0 fails. " + "; ".join(_fit_text(a.fits[p], p) for p in PREDICTORS)
                  + f". Best predictor: {col_name(best) if best else 'none (no usable negative-slope fit)'}."),
            Claim("e′", "PLD (held-out NLL of the references, eq. 4.2) predicts forgetting",
                  fit_verdict(a.fits["pld"]), _fit_text(a.fits["pld"], "pld") + ".")]


def _seed_scale(a: Analysis) -> str:
    """How far apart two single runs of the main TMS setting land: its seed-to-seed std of the gain."""
    g = mean_se(x["gain"] for x in a.gain_recs.get("tms", []))
    return (f" For scale: the main TMS run's gain has a seed-to-seed std of {g.se * math.sqrt(g.n):.3f} (n={g.n})."
            if g.se is not None else "")


def _seed_note(a: Analysis) -> str:
    n = len(a.abl_seeds)
    return f"Ablations on {n} seed(s)" + (" (one seed)" if n == 1 else "")


def claim_uniform_p_t(a: Analysis) -> Claim:
    """(f) uniform p(t) > early and > late on the gain over SFT's curve."""
    levels = {r["label"].split(" ")[0]: r for r in a.abl.get("p_t", [])}
    if not {"early", "uniform", "late"} <= set(levels):
        return Claim("f", "uniform p(t) beats early and late", "inconclusive (missing data)",
                     f"p(t) levels present: {sorted(levels) or 'none'}.")
    parts, words = [], []
    for other in ("early", "late"):
        c = compare(levels["uniform"]["gain"], levels[other]["gain"])
        parts.append(verdict(c, 1))
        words.append(f"uniform − {other}: {_cmp_text(c)}")
    pts = ", ".join(f"{k}: gain {fmt_num(levels[k]['gain'].mean)}, target {fmt_num(levels[k]['target'].mean)}"
                    for k in ("early", "uniform", "late"))
    u = levels["uniform"]["gain"].mean
    favour = u is not None and all(levels[o]["gain"].mean is None or u > levels[o]["gain"].mean
                                   for o in ("early", "late"))
    return Claim("f", "uniform p(t) beats early and late (gain over SFT's curve)", combine(parts),
                 f"{_seed_note(a)}. {pts}. {'; '.join(words)}. Point estimates "
                 f"{'favour' if favour else 'do not favour'} uniform." + _seed_scale(a))


def claim_moderate_T(a: Analysis) -> Claim:
    """(g) the best interior T of the sweep beats both of its ends on the gain over SFT's curve."""
    levels = []
    for r in a.abl.get("T", []):
        try:
            levels.append((float(r["label"].split(" ")[0]), r))
        except ValueError:
            continue
    levels = [(t, r) for t, r in levels if r["gain"].mean is not None]
    if len(levels) < 3:
        return Claim("g", "moderate T is best", "inconclusive (missing data)",
                     f"{len(levels)} value(s) of T with a defined gain; need ≥ 3.")
    lo, hi = min(t for t, _ in levels), max(t for t, _ in levels)
    t_best = max(levels, key=lambda p: p[1]["gain"].mean)[0]
    t_in, r_in = max([(t, r) for t, r in levels if lo < t < hi], key=lambda p: p[1]["gain"].mean)
    parts, words = [], []
    for t_end in (lo, hi):
        c = compare(r_in["gain"], dict(levels)[t_end]["gain"])
        parts.append(verdict(c, 1))
        words.append(f"T={t_in:g} − T={t_end:g}: {_cmp_text(c)}")
    t_tgt = max(levels, key=lambda p: -math.inf if p[1]["target"].mean is None else p[1]["target"].mean)[0]
    pts = ", ".join(f"T={t:g}: {fmt_num(r['gain'].mean)}" for t, r in levels)
    return Claim("g", "moderate T is best (best interior T beats both ends of the sweep on gain)", combine(parts),
                 f"{_seed_note(a)}. Gain by T: {pts}. Highest gain at T={t_best:g} "
                 f"({'interior' if lo < t_best < hi else 'an end of the sweep'}), highest target at T={t_tgt:g}. "
                 f"{'; '.join(words)}." + _seed_scale(a))


def claims(a: Analysis) -> list[Claim]:
    """The claims (a)–(g), each with its verdict by the stated rule and the numbers it rests on."""
    return [claim_sft_forgets(a), claim_rl_forgets_least(a), claim_tms_gain(a), claim_tms_beats_distillation(a),
            *claim_drift_predicts(a), claim_uniform_p_t(a), claim_moderate_T(a)]
