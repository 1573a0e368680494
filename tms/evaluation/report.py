r"""Reports over run directories: a Table-9-style table (markdown + CSV) and the paper's plots.

Usage::

    python -m tms.evaluation.report RUN_DIR [RUN_DIR ...] --out DIR [--scale 100] [--digits 1]

Each argument is a run directory of ``python train.py`` / ``python evaluate.py`` (it holds
``results.json``) or any directory above some, e.g. a Hydra multirun directory (searched
recursively). Writes into ``--out``:

* ``table.md`` / ``table.csv``: one row per method label × (target | S_xfer | each retention
  benchmark | F | KL-to-base: KL(π ‖ π_0) on target and retention prompts, and the forward KL(π_0 ‖ π)
  on retention prompts), Base first. A label is the method name plus the hyperparameters that
  differ between runs of that method (α, p(t), T from ``config.resolved.yaml``, and any other
  command-line override in ``.hydra/overrides.yaml``); runs that share a label (seeds) are averaged,
  ``n`` counts them. Markdown cells show ``score (↑/↓ Δ)`` with :math:`\Delta_b = S_b(\pi) -
  S_b(\pi_{\theta_0})` computed from the ``scores`` of each run and of its base row, then averaged,
  in units × ``--scale`` (100: percentage points, as Table 9); best / second-best of each column are
  bold / italic. The CSV holds the same rows with raw, unscaled numbers and every metric
  (``kl_{target,retention}_{seq,token}`` from ``kl_to_base``, ``kl_from_{target,retention}_{seq,token}``
  from ``kl_from_base``; empty for results that predate it).
* ``pareto.png``: target vs mean retention per method, with SFT's checkpoint curve (θ0, t = 1..T) and
  the Pareto frontier of all points; ``trajectory.png``: held-out PLD (eq. 4.2) and KL-to-base across
  the T SFT checkpoints; ``forgetting_vs_kl.png``: F against KL-to-base on target and retention prompts.

The checkpoint curve comes from ``checkpoints.json`` (``python evaluate.py checkpoints_of=<SFT run>``);
without it the PLD panel falls back to the training-time PLD in ``checkpoints/trajectory.json``.
"""
from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tms.core.io import read_json

METHOD_ORDER = ("base", "sft", "self_sft", "final_sft", "reinforce", "grpo", "tms")
PARAM_NAMES = {"data.target_source.alpha": "α", "data.target_source.p_t": "p_t", "sft.num_checkpoints": "T"}
NOT_PARAMS = ("method", "seed", "data", "cache_dir", "model_path", "label", "checkpoints_of", "buffer_of",
              "buffer_limit", "logger", "trainer", "eval")


@dataclass
class Run:
    """One run directory: its results, resolved config, overrides and SFT checkpoint curve (if any)."""

    dir: Path
    results: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    curve: dict[str, Any] | None = None
    trajectory: dict[str, Any] | None = None

    @property
    def suite(self) -> dict[str, Any]:
        if "suite" in self.results:
            return self.results["suite"]
        ev = self.config.get("eval") or {}
        target = str(ev.get("target"))
        return {"target": target, "other_targets": [b for b in ev.get("other_targets") or [] if b != target],
                "retention": list(ev.get("retention") or [])}

    @property
    def params(self) -> dict[str, str]:
        """Hyperparameters that may name the run: α / p_t / T, then other overrides (not for evaluate.py runs)."""
        if "base_model" in self.results:  # an evaluate.py run: its label is explicit
            return {}
        out: dict[str, str] = {}
        src = (self.config.get("data") or {}).get("target_source") or {}
        for key, name in PARAM_NAMES.items():
            section, _, leaf = key.rpartition(".")
            node = {"data.target_source": src, "sft": self.config.get("sft") or {}}[section]
            if leaf in node:
                out[name] = str(node[leaf])
        for raw, value in self.overrides.items():
            k = raw.lstrip("+~")
            if k not in NOT_PARAMS and k not in PARAM_NAMES and not k.startswith("hydra."):
                out[k] = value
        return out


@dataclass
class Entry:
    """One model row of one run, with its base row (for Δ)."""

    method: str
    params: dict[str, str]
    task: str
    seed: Any
    row: dict[str, Any]
    base: dict[str, Any]
    label: str = ""


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Directories holding ``results.json``: the paths themselves or, recursively, below them."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(r.parent for r in p.rglob("results.json") if ".hydra" not in r.parts)
        else:
            raise FileNotFoundError(f"{p}: not a run directory (no results.json) nor a directory of runs")
    if not found:
        raise FileNotFoundError(f"no results.json under {list(map(str, paths))}")
    return list(dict.fromkeys(found))


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    return dict(str(o).split("=", 1) for o in items if "=" in str(o))


def load_run(run_dir: str | Path) -> Run:
    d = Path(run_dir)
    cfg_path = d / "config.resolved.yaml"
    traj = d / "checkpoints" / "trajectory.json"
    return Run(d, read_json(d / "results.json"), yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {},
               _overrides(d), read_json(d / "checkpoints.json") if (d / "checkpoints.json").is_file() else None,
               read_json(traj) if traj.is_file() else None)


def row_params(params: dict[str, str], name: str, main: str | None) -> dict[str, str]:
    """The run's params that apply to its row ``name``: all for the trained method; for the SFT baseline
    row those not about the target source; for the base row only the model."""
    if name == main:
        return dict(params)
    if name == "base":
        return {k: v for k, v in params.items() if k.startswith("model")}
    return {k: v for k, v in params.items() if k not in ("α", "p_t") and "target_source" not in k}


def entries(runs: Sequence[Run]) -> list[Entry]:
    """Every model row of every run (base and SFT rows deduplicated by (method, task, seed)), labelled."""
    out: list[Entry] = []
    seen: set[tuple] = set()
    for run in runs:
        task, seed = run.suite["target"], run.results.get("seed", run.config.get("seed"))
        rows = run.results.get("rows") or {run.results.get("method", run.dir.name): run.results}
        base = rows.get("base", run.results)
        main = run.results.get("method")
        for name, row in rows.items():
            params = row_params(run.params, name, main)
            key = (name, task, seed, tuple(sorted(params.items())))
            if key in seen:
                continue
            seen.add(key)
            out.append(Entry(name, params, task, seed, row, base))
    for method in {e.method for e in out}:  # label = method + the params with several values among its runs
        group = [e for e in out if e.method == method]
        keys = sorted({k for e in group for k in e.params})
        varying = [k for k in keys if len({e.params[k] for e in group if k in e.params}) > 1]
        for e in group:
            extra = ", ".join(f"{k}={e.params[k]}" for k in varying if k in e.params)
            e.label = f"{method} ({extra})" if extra else method
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def _kl(row: dict, group: str, key: str = "kl_seq", direction: str = "kl_to_base") -> float | None:
    """``row[direction][group][key]`` or None; ``direction`` = ``kl_to_base`` (KL(π ‖ π_0), samples of π) or
    ``kl_from_base`` (KL(π_0 ‖ π), samples of θ0)."""
    return ((row.get(direction) or {}).get(group) or {}).get(key)


def aggregate(ents: Sequence[Entry], tasks: Sequence[str], retention: Sequence[str]) -> list[dict[str, Any]]:
    """One record per label: raw (unscaled) means over its entries; Δ's against each entry's own base row."""
    labels = sorted(dict.fromkeys(e.label for e in ents),
                    key=lambda lb: (METHOD_ORDER.index(lb.split(" ")[0]) if lb.split(" ")[0] in METHOD_ORDER
                                    else len(METHOD_ORDER), [e.label for e in ents].index(lb)))
    records = []
    for label in labels:
        group = [e for e in ents if e.label == label]
        is_base = label == "base"
        rec: dict[str, Any] = {"label": label, "method": group[0].method, "n": len({(e.task, e.seed) for e in group})}
        rec.update(group[0].params)
        for task in tasks:
            of_task = [e for e in group if e.task == task]
            rec[f"target/{task}"] = _mean(e.row["scores"].get(task) for e in of_task)
            rec[f"delta/{task}"] = _mean(e.row["scores"][task] - e.base["scores"][task] for e in of_task
                                         if task in e.row["scores"] and task in e.base["scores"])
        rec["xfer"] = None if is_base else _mean(e.row.get("xfer") for e in group)
        for b in retention:
            have = [e for e in group if b in e.row["scores"] and b in e.base["scores"]]
            rec[b] = _mean(e.row["scores"][b] for e in have)
            rec[f"delta/{b}"] = _mean(e.row["scores"][b] - e.base["scores"][b] for e in have)
        rec["retention_mean"] = _mean(rec[b] for b in retention)
        rec["forgetting"] = _mean(e.row.get("forgetting") for e in group)
        for grp in ("target", "retention"):
            rec[f"kl_{grp}_seq"] = _mean(_kl(e.row, grp) for e in group)
            rec[f"kl_{grp}_token"] = _mean(_kl(e.row, grp, "kl_token") for e in group)
        for grp in ("target", "retention"):  # the forward KL(π_0 ‖ π), from θ0's samples
            rec[f"kl_from_{grp}_seq"] = _mean(_kl(e.row, grp, direction="kl_from_base") for e in group)
            rec[f"kl_from_{grp}_token"] = _mean(_kl(e.row, grp, "kl_token", "kl_from_base") for e in group)
        rec["pld"] = _mean((e.row.get("pld") or {}).get("pld") for e in group)
        rec["nll_token"] = _mean((e.row.get("pld") or {}).get("nll_token") for e in group)
        for k in sorted({k for e in group for k in (e.row.get("pass_at_k") or {})}, key=int):
            rec[f"pass@{k}"] = _mean((e.row.get("pass_at_k") or {}).get(k) for e in group)
        rec["sc_acc"] = _mean(e.row.get("sc_acc") for e in group)
        rec["answer_entropy"] = _mean(e.row.get("answer_entropy") for e in group)
        records.append(rec)
    return records


def _delta(d: float | None, scale: float, digits: int) -> str:
    """``↑x`` / ``↓x`` / ``±0.0`` for a change d (× scale, rounded to ``digits``), as in Table 9."""
    if d is None:
        return ""
    v = round(d * scale, digits)
    if v == 0:
        return f"±{0:.{digits}f}"
    return f"{'↑' if v > 0 else '↓'}{abs(v):.{digits}f}"


def _shown(v: float, scale: float | None, digits: int) -> float:
    """The value as displayed (scaled and rounded): ties and ranks follow what the reader sees."""
    return round(v * scale, digits) + 0.0 if scale is not None else float(f"{v:.3g}")


def _ranks(shown: Sequence[float | None], labels: Sequence[str], higher: bool) -> dict[int, int]:
    """Rank 0 / 1 (best / second) of each non-base row's displayed value; nothing when all tie."""
    vals = sorted({v for v, lb in zip(shown, labels) if lb != "base" and v is not None}, reverse=higher)
    if len(vals) < 2:
        return {}
    return {i: vals.index(v) for i, (v, lb) in enumerate(zip(shown, labels))
            if lb != "base" and v is not None and vals.index(v) < 2}


def markdown(records: Sequence[dict], tasks: Sequence[str], retention: Sequence[str], scale: float = 100.0,
             digits: int = 1) -> str:
    """The Table-9-style markdown table (see the module docstring)."""
    # (key, header, higher is better, scaled, Δ key, signed with an arrow)
    cols = [(f"target/{t}", f"{t} ↑", True, True, f"delta/{t}", False) for t in tasks]
    cols += [("xfer", "S_xfer (avg Δ other tgt) ↑", True, True, None, True)]
    cols += [(b, f"{b} ↑", True, True, f"delta/{b}", False) for b in retention]
    cols += [("forgetting", "F ↑", True, True, None, False), ("kl_target_seq", "KL tgt ↓", False, False, None, False),
             ("kl_retention_seq", "KL ret ↓", False, False, None, False),
             ("kl_from_retention_seq", "fwd KL ret ↓", False, False, None, False)]
    header = ["Method", *[c[1] for c in cols], "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":-:"] * (len(header) - 1)) + "|"]
    labels = [r["label"] for r in records]
    shown = {c[0]: [None if r.get(c[0]) is None else _shown(r[c[0]], scale if c[3] else None, digits)
                    for r in records] for c in cols}
    ranks = {c[0]: _ranks(shown[c[0]], labels, c[2]) for c in cols}
    for i, r in enumerate(records):
        cells = [r["label"]]
        for key, _, _, scaled, dkey, arrow in cols:
            v = shown[key][i]
            if v is None:
                cells.append("–")
                continue
            text = _delta(r[key], scale, digits) if arrow else (f"{v:.{digits}f}" if scaled else f"{v:g}")
            if dkey and r["label"] != "base" and r.get(dkey) is not None:
                text += f" ({_delta(r[dkey], scale, digits)})"
            mark = {0: "**", 1: "_"}.get(ranks[key].get(i), "")
            cells.append(f"{mark}{text}{mark}")
        cells.append(str(r["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    unit = "percentage points" if scale == 100 else f"× {scale:g}"
    lines.append("")
    lines.append(f"Scores, Δ, S_xfer and F in {unit}; Δ vs the base model in parentheses; KL tgt / KL ret = "
                 "KL(π ‖ π0) on the target / retention prompts, fwd KL ret = KL(π0 ‖ π) on the retention prompts, "
                 "in nats per sequence (mean over prompts); **best** / _second_ among the methods; "
                 "n = runs averaged.")
    return "\n".join(lines) + "\n"


def write_csv(records: Sequence[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in records for k in r))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in keys} for r in records])


def report(paths: Sequence[str | Path], out: str | Path, scale: float = 100.0, digits: int = 1) -> dict[str, Path]:
    """Collect the runs under ``paths`` and write the table and plots into ``out``; returns the written files."""
    from tms.evaluation.plots import write_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in find_runs(paths)]
    ents = entries(runs)
    tasks = list(dict.fromkeys(r.suite["target"] for r in runs))
    retention = list(dict.fromkeys(b for r in runs for b in r.suite["retention"]))
    records = aggregate(ents, tasks, retention)
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv"}
    files["table.md"].write_text(markdown(records, tasks, retention, scale, digits))
    write_csv(records, files["table.csv"])
    files.update(write_plots(runs, ents, tasks, out, scale))
    return files


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tms.evaluation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (with results.json) or directories above them")
    parser.add_argument("--out", required=True, help="output directory for table.md, table.csv and the PNGs")
    parser.add_argument("--scale", type=float, default=100.0, help="multiply scores in table.md (100: percent)")
    parser.add_argument("--digits", type=int, default=1, help="decimals of scores in table.md")
    args = parser.parse_args(argv)
    files = report(args.runs, args.out, args.scale, args.digits)
    print(Path(files["table.md"]).read_text())
    for name, path in files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
