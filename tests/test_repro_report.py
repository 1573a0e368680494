"""The toy reproduction report (tms.repro.report): its maths against hand-computed values, and an end-to-end
render of synthetic CSVs whose gains and verdicts are known by construction."""
import csv
import math
import re

import pytest

from tms.repro import analysis as A
from tms.repro import claims as C
from tms.repro import data as D
from tms.repro import formatting as F
from tms.repro import report as R

# ---------------------------------------------------------------------------------------------------------
# pure maths
# ---------------------------------------------------------------------------------------------------------


def test_mean_se_of_one_two_three_is_two_and_one_over_root_three():
    s = A.mean_se([1, 2, 3, None])
    assert (s.mean, s.n) == (2.0, 3) and s.se == pytest.approx(1 / math.sqrt(3))
    assert A.mean_se([0.5]) == A.Stat(0.5, None, 1)
    assert A.mean_se([None]) == A.Stat(None, None, 0)
    assert F.fmt_stat(A.mean_se([1, 2, 3])) == "2.000 ± 0.577"
    assert F.fmt_stat(A.mean_se([0.5])) == "0.500 (n=1, no SE)"
    assert F.fmt_stat(A.mean_se([])) == "–"


def test_gain_on_a_straight_line_curve():
    curve = [(0.0, 1.0), (1.0, 0.0)]  # retention = 1 − target
    g = A.gain_over_curve(0.25, 0.9, curve)
    assert g.sft_retention == pytest.approx(0.75) and g.gain == pytest.approx(0.15)
    assert A.gain_over_curve(0.5, 0.5, curve).gain == pytest.approx(0.0)  # on the curve: no gain
    assert A.gain_over_curve(0.5, 0.3, curve).gain == pytest.approx(-0.2)
    out = A.gain_over_curve(1.2, 0.9, curve)  # outside the range: undefined, never extrapolated
    assert out.gain is None and "above" in out.reason and "[0.000, 1.000]" in out.reason
    assert A.gain_over_curve(-0.1, 0.9, curve).gain is None
    assert A.gain_over_curve(0.5, 0.9, []).gain is None
    assert A.gain_over_curve(None, 0.9, curve).gain is None


def test_envelope_of_a_non_monotone_curve_takes_the_best_crossing():
    # target goes 0 → 0.4 → back to 0.2 → 0.6: x = 0.3 is crossed three times, at retention 0.7, 0.75 and 0.7
    curve = [(0.0, 1.0), (0.4, 0.6), (0.2, 0.9), (0.6, 0.1)]
    assert A.envelope(curve, 0.3) == pytest.approx(0.75)
    assert A.envelope(curve, 0.5) == pytest.approx(0.3)  # only the last segment
    # at x = 0.4: segments 1 and 2 meet at 0.6, segment 3 gives 0.9 − 0.5·0.8 = 0.5 → 0.6
    assert A.envelope(curve, 0.4) == pytest.approx(0.6)
    assert A.envelope(curve, 0.7) is None and A.envelope(curve, -0.1) is None
    assert A.envelope([(0.2, 0.5), (0.2, 0.8)], 0.2) == pytest.approx(0.8)  # vertical segment: its top
    assert A.envelope([(0.2, 0.5)], 0.2) == 0.5 and A.envelope([(0.2, 0.5)], 0.3) is None


def test_linear_fit_and_r2():
    f = A.linear_fit([1, 2, 3], [2, 4, 6])
    assert (f.slope, f.intercept, f.r2, f.n) == (pytest.approx(2), pytest.approx(0), pytest.approx(1), 3)
    f = A.linear_fit([0, 1, 2, None], [0, 2, 1, 5])  # slope 0.5, intercept 0.5, SS_res 1.5, SS_tot 2
    assert (f.slope, f.intercept, f.r2, f.n) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.25), 3)
    assert A.linear_fit([1, 1, 1], [1, 2, 3]).r2 is None  # constant x
    assert A.linear_fit([1], [1]).slope is None


def test_compare_and_verdicts_follow_the_two_combined_se_rule():
    a, b = A.Stat(1.0, 0.1, 3), A.Stat(0.5, 0.1, 3)  # diff 0.5 > 2·√0.02 = 0.283
    assert C.compare(a, b).sign == 1 and C.compare(b, a).sign == -1
    assert C.compare(A.Stat(0.7, 0.1, 3), b).sign == 0  # diff 0.2 < 0.283
    assert C.verdict(C.compare(a, b)) == "reproduced"
    assert C.verdict(C.compare(b, a)) == "contradicted"
    assert C.verdict(C.compare(A.Stat(0.7, 0.1, 3), b)).startswith("inconclusive (within 2")
    assert C.verdict(C.compare(A.Stat(9.0, None, 1), b)) == "inconclusive (n=1)"
    assert C.verdict(C.compare(A.Stat(None, None, 0), b)) == "inconclusive (missing data)"
    assert C.verdict(C.compare(A.Stat(-0.3, 0.1, 3), A.Stat.exact(0)), -1) == "reproduced"
    assert C.combine(["reproduced", "reproduced"]) == "reproduced"
    assert C.combine(["reproduced", "contradicted", "inconclusive (n=1)"]) == "contradicted"
    assert C.combine(["reproduced", "inconclusive (n=1)"]) == "inconclusive (n=1)"


def test_fit_verdict_rule():
    xs = [0, 1, 2, 3, 4, 5]
    assert C.fit_verdict(A.linear_fit(xs, [-x for x in xs])) == "reproduced"
    assert C.fit_verdict(A.linear_fit(xs, xs)) == "contradicted"  # more drift, less forgetting
    assert C.fit_verdict(A.linear_fit(xs, [0, -1, 0, -1, 0, -1])) == "contradicted"  # R² ≈ 0.09
    assert C.fit_verdict(A.linear_fit([0, 1, 2], [0, -1, -2])).startswith("inconclusive (3 points")


def test_ablation_groups_place_main_at_its_value():
    res = D.Results([{"method": "tms", "seed": 0, "setting": s} for s in
                     ("main", "T=12", "T=2", "p_t=late", "p_t=early", "alpha=1", "correct_only")], [], [])
    groups = {g["key"]: g["levels"] for g in A.ablation_groups(res)}
    assert groups["T"] == [("2", "T=2"), ("10 (main)", "main"), ("12", "T=12")]
    assert groups["p_t"] == [("early", "p_t=early"), ("uniform (main)", "main"), ("late", "p_t=late")]
    assert groups["alpha"] == [("0.25 (main)", "main"), ("1", "alpha=1")]
    assert groups["correct_only"] == [("all samples (main)", "main"), ("correct only", "correct_only")]
    assert [g["key"] for g in A.ablation_groups(res)] == ["p_t", "T", "alpha", "correct_only"]


# ---------------------------------------------------------------------------------------------------------
# end to end on synthetic CSVs
# ---------------------------------------------------------------------------------------------------------

SKILLS = ("add", "reverse")
HEADER = ["method", "seed", "setting", "t", "target", *SKILLS, "retention_mean", "F", "xfer", "kl_fwd_target",
          "kl_rev_target", "kl_fwd_retention", "kl_rev_retention", "pld", "pass@1", "pass@4", "sc_acc",
          "answer_entropy"]
#: SFT's curve on every seed: θ0 (0.1, 0.9) → (0.3, 0.7) → (0.5, 0.5) → (0.7, 0.3), i.e. retention = 1 − target
CURVE = [(0.1, 0.9), (0.3, 0.7), (0.5, 0.5), (0.7, 0.3)]
#: (method, per-seed target, per-seed retention); gains = retention − (1 − target)
METHODS = {
    "sft": ([0.7] * 3, [0.3] * 3),                                 # gain 0 on every seed
    "self_sft": ([0.3] * 3, [0.70, 0.71, 0.69]),                   # gains 0, .01, −.01
    "final_sft": ([0.6] * 3, [0.41, 0.40, 0.42]),                  # gains .01, 0, .02
    "tms": ([0.50, 0.51, 0.52], [0.70, 0.71, 0.72]),               # gains .20, .22, .24
    "grpo": ([0.40] * 3, [0.88, 0.89, 0.90]),                      # gains .28, .29, .30
    "reinforce": ([0.30, 0.30, 0.95], [0.80, 0.82, 0.85]),         # gains .10, .12, undefined (0.95 > 0.7)
}
ABLATIONS = {  # seed 0 only: (target, retention); gains
    "p_t=early": (0.3, 0.75),  # .05
    "p_t=late": (0.6, 0.50),   # .10
    "T=2": (0.4, 0.65),        # .05
    "T=6": (0.5, 0.75),        # .25
}


def _row(method, seed, target, ret, setting="main", t="", rl=False):
    f = min(ret - 0.9, 0.0)
    kl = -10 * f + 0.1 * seed
    row = {"method": method, "seed": seed, "setting": setting, "t": t, "target": target, "add": ret, "reverse": ret,
           "retention_mean": ret, "F": f, "xfer": -0.1, "kl_fwd_target": kl, "kl_rev_target": 0.9 * kl,
           "kl_fwd_retention": 2 * kl, "kl_rev_retention": 1.5 * kl, "pld": "" if rl else 3 + kl,
           "pass@1": target, "pass@4": min(1, target + 0.1), "sc_acc": target, "answer_entropy": 1 - target}
    return row


def synthetic(tmp_path, tms_retention=None):
    rows = []
    for s in range(3):
        base = _row("base", s, 0.1, 0.9)
        base.update({c: "" for c in D.KL_COLUMNS}, F="")  # empty: filled with 0
        rows.append(base)
        rows += [_row(f"sft_t={t}", s, x, y, t=t) for t, (x, y) in enumerate(CURVE) if t > 0]
        for m, (tg, rt) in METHODS.items():
            if m == "tms" and tms_retention is not None:
                rt = tms_retention
            rows.append(_row(m, s, tg[s], rt[s], rl=m in C.RL_METHODS))
    rows += [_row("tms", 0, x, y, setting=k) for k, (x, y) in ABLATIONS.items()]
    results = tmp_path / "in" / "results.csv"
    results.parent.mkdir(exist_ok=True)
    with results.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    buffer = tmp_path / "in" / "buffer.csv"
    with buffer.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "setting", "t", "n", "accuracy", "mean_tokens", "finished", "share_native",
                    "share_teacher", "share_other", "student_pld"])
        for s in range(3):
            for t in range(4):
                w.writerow([s, "main", t, 100, 0.1 + 0.2 * t, 20 + t, 1.0, 1 - 0.3 * t, 0.3 * t, "", 5 - t])
    return results, buffer


META = {"command": "python -m tms.repro.run seeds=3", "seeds": [0, 1, 2],
        "world": {"model": "Qwen2 1.0M", "skills": list(SKILLS), "target": "sum"},
        "timings": {"sft/seed0": 12.5, "tms/seed0": 30.0}, "git_commit": "abc123", "date": "2024-01-01", "plan": "conf/repro/toy.yaml"}


def _claim(md, key):
    line = next(ln for ln in md.splitlines() if ln.startswith(f"- **({key})"))
    return re.search(r": (reproduced|contradicted|inconclusive[^.]*)\.\*\*", line).group(1)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    results, buffer = synthetic(tmp)
    files = R.write_report(results, buffer, tmp / "docs" / "toy_reproduction", tmp / "docs" / "toy_reproduction.md",
                           META)
    return tmp, files, files["md"].read_text()


def test_report_has_the_tables_plots_and_header(rendered):
    tmp, files, md = rendered
    for png in ("plane.png", "forgetting_vs_kl.png", "buffer.png", "T.png"):
        assert files[png].is_file() and files[png].stat().st_size > 1000, png
        assert f"](toy_reproduction/{png})" in md
    assert "python -m tms.repro.run seeds=3" in md and "abc123" in md and "2024-01-01" in md
    assert "Qwen2 1.0M" in md and "sft/seed0" in md and "- plan: conf/repro/toy.yaml" in md
    tms_rows = [ln for ln in md.splitlines() if ln.startswith("| TMS | 3 |")]
    assert len(tms_rows) == 3 and all("±" in ln for ln in tms_rows)  # the three blocks of the main table
    assert "| θ0 (base) | 3 | 0.100 ± 0.000 |" in md
    # RL rows have no PLD: an empty cell, shown as –
    grpo = next(ln for ln in md.splitlines() if ln.startswith("| GRPO | 3 |") and "PLD" not in ln and
                ln.count("|") == len(D.KL_COLUMNS) + 4)
    assert grpo.rstrip(" |").endswith("–")
    with files["table_main.csv"].open() as fh:
        main = {r["method"]: r for r in csv.DictReader(fh)}
    assert float(main["tms"]["target_mean"]) == pytest.approx(0.51)
    assert float(main["tms"]["target_se"]) == pytest.approx(0.01 / math.sqrt(3))
    assert "empty KL cells of θ0 set to 0" in md and "empty F of θ0 set to 0" in md
    assert "--meta" in md and (files["meta.json"]).is_file() and files["results.csv"].is_file()


def test_gain_table_matches_a_hand_computation(rendered):
    tmp, files, md = rendered
    with files["gain.csv"].open() as fh:
        gains = {(r["method"], int(r["seed"])): r for r in csv.DictReader(fh)}
    for m, (tg, rt) in METHODS.items():
        for s in range(3):
            expected = rt[s] - (1 - tg[s]) if 0.1 <= tg[s] <= 0.7 else None
            got = gains[(m, s)]["gain"]
            if expected is None:
                assert got == "" and "above SFT's curve range [0.100, 0.700]" in gains[(m, s)]["reason"]
            else:
                assert float(got) == pytest.approx(expected, abs=1e-9), (m, s)
    line = next(ln for ln in md.splitlines() if ln.startswith("| TMS | +0.200 |"))
    assert "| +0.220 | +0.240 | 0.220 ± 0.012 |" in line  # SE = 0.02/√3
    reinforce = next(ln for ln in md.splitlines() if ln.startswith("| REINFORCE | +0.100 |"))
    assert "undefined" in reinforce and "0.110 ± 0.010" in reinforce


def test_claims_follow_the_numbers(rendered):
    _, files, md = rendered
    assert _claim(md, "a") == "reproduced"  # F(SFT) = −0.6 on every seed, SE 0
    assert _claim(md, "b") == "reproduced"  # GRPO .29 ± .006 beats TMS .22 ± .012 and the SFT family
    assert _claim(md, "c") == "reproduced"
    # TMS beats Self-SFT on gain and target, Final-SFT on gain, but has a lower target than Final-SFT (0.51 < 0.6)
    assert _claim(md, "d") == "contradicted"
    assert _claim(md, "e") == "reproduced"  # KL = −10·F + small seed noise
    assert _claim(md, "f") == "inconclusive (n=1)" and "(one seed)" in md
    assert _claim(md, "g") == "inconclusive (n=1)"
    g = next(ln for ln in md.splitlines() if ln.startswith("- **(g)"))
    assert "Highest gain at T=6 (interior)" in g
    f = next(ln for ln in md.splitlines() if ln.startswith("- **(f)"))
    assert "Point estimates favour uniform" in f  # uniform .20 > early .05, late .10


def test_a_claim_flips_when_the_data_contradicts_it(tmp_path):
    # TMS below SFT's curve: retention 0.3 at target ≈ 0.5 → gains ≈ −0.2
    results, buffer = synthetic(tmp_path, tms_retention=[0.30, 0.31, 0.29])
    files = R.write_report(results, None, tmp_path / "out", tmp_path / "report.md", META)
    md = files["md"].read_text()
    assert _claim(md, "c") == "contradicted"
    assert "No buffer.csv given." in md and "buffer.png" not in files


def test_missing_columns_are_reported_not_fatal(tmp_path):
    results, _ = synthetic(tmp_path)
    with results.open() as fh:
        rows = list(csv.DictReader(fh))
    keep = [c for c in HEADER if c not in ("pld", "xfer", "setting", "F")]
    with results.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        w.writerows([r for r in rows if r["setting"] == "main"])
    res = D.read_results(results)
    assert res.skills == list(SKILLS)
    assert all(r["pld"] is None and r["setting"] == "main" for r in res.rows)
    tms0 = next(r for r in res.rows if r["method"] == "tms" and r["seed"] == 0)
    assert tms0["F"] == pytest.approx(0.70 - 0.9)  # recomputed with eq. 3.2 against θ0 of seed 0
    files = R.write_report(results, None, tmp_path / "out", tmp_path / "report.md", {})
    md = files["md"].read_text()
    assert "column `pld` missing from results.csv" in md and "empty F recomputed" in md
    assert "No ablation rows" in md and _claim(md, "f") == "inconclusive (missing data)"
    with pytest.raises(ValueError, match="target"):
        bad = tmp_path / "bad.csv"
        bad.write_text("method,seed\nsft,0\n")
        D.read_results(bad)


def test_cli_rerenders_from_the_copied_inputs(rendered, tmp_path, capsys):
    tmp, files, md = rendered
    out = files["results.csv"].parent
    R.main([str(files["results.csv"]), "--buffer", str(files["buffer.csv"]), "--meta", str(files["meta.json"]),
            "--out", str(tmp_path / "again"), "--md", str(tmp_path / "again.md")])
    again = (tmp_path / "again.md").read_text()
    assert "md:" in capsys.readouterr().out
    assert again.split("## Reading")[1].split("## How to regenerate")[0] == \
        md.split("## Reading")[1].split("## How to regenerate")[0].replace("](toy_reproduction/", "](again/")
    assert out.is_dir()


def test_the_header_gives_the_wall_time_of_a_parallel_run():
    from tms.repro.markdown import header_md

    meta = {"command": "python repro.py", "jobs": 2, "wall_seconds": 125.0, "timings": {"a": 100.0, "b": 90.0}}
    text = header_md(meta, ["results.csv"])
    assert "Sum of the entries: 190 s (0:03:10)." in text
    assert "ran 2 at a time" in text and "took 125 s (0:02:05) from start to end" in text
    assert "at a time" not in header_md({**meta, "jobs": 1}, ["results.csv"])
