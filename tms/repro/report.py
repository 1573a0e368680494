r"""The report of the toy reproduction (issue #19 item 4): ``docs/toy_reproduction.md`` + PNGs from two CSVs.

Usage (re-render without rerunning anything)::

    python -m tms.repro.report RESULTS.csv [--buffer BUFFER.csv] [--meta META.json] \
        --out docs/toy_reproduction --md docs/toy_reproduction.md

:func:`write_report` is what the driver (:mod:`tms.repro.run`) calls. Everything in the markdown is
computed from the CSVs (and ``meta`` for the header); nothing is typed in by hand. The layers, each
importing only those before it:

* :mod:`tms.repro.data`: reading and normalising results.csv / buffer.csv (their format is described there);
* :mod:`tms.repro.analysis`: the maths (mean ± SE, gain over SFT's curve, least-squares fits, ablations);
* :mod:`tms.repro.formatting`: how numbers and names are written;
* :mod:`tms.repro.claims`: the comparison rule and the verdict of every claim;
* :mod:`tms.repro.plots`: the PNGs;
* :mod:`tms.repro.markdown`: the sections of the report;
* this module: :func:`write_report` and the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tms.repro.analysis import analyse
from tms.repro.data import read_buffer, read_results
from tms.repro.markdown import (header_md, section_ablations, section_buffer, section_claims, section_fits,
                                section_main, section_notes, section_plane, section_regenerate)


def write_report(results_csv: Path, buffer_csv: Path | None, out_dir: Path, md_path: Path,
                 meta: dict) -> dict[str, Path]:
    """Render the markdown report, its PNGs and CSV tables; returns ``{file name: path}`` (``"md"``: the report).

    Writes into ``out_dir``: ``plane.png``, ``forgetting_vs_kl.png``, ``buffer.png`` (with a buffer),
    ``T.png`` (with a T sweep), ``table_main.csv``, ``gain.csv``, ``sft_curve.csv``, ``fits.csv``,
    ``ablations.csv`` (with ablations), ``buffer_table.csv`` (with a buffer), a copy of the inputs
    (``results.csv``, ``buffer.csv``) and ``meta.json``, so that ``python -m tms.repro.report`` re-renders the
    same report from ``out_dir`` alone. ``meta``: ``command, seeds, world, timings, git_commit, date``
    (each optional; "not recorded" where absent) and ``main`` (the main TMS run's ``p_t, T, alpha``; default
    :data:`tms.repro.analysis.MAIN_DEFAULTS`).
    """
    results_csv, out_dir, md_path = Path(results_csv), Path(out_dir), Path(md_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    res = read_results(results_csv)
    buf = read_buffer(buffer_csv) if buffer_csv else None
    files: dict[str, Path] = {}
    for src, dst in ((results_csv, out_dir / "results.csv"), (buffer_csv, out_dir / "buffer.csv")):
        if src is not None:
            if Path(src).resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            files[dst.name] = dst
    files["meta.json"] = out_dir / "meta.json"
    files["meta.json"].write_text(json.dumps(meta, indent=2, default=str) + "\n")

    def rel(p: Path) -> str:
        return os.path.relpath(p, md_path.parent)

    a = analyse(res, meta.get("main"))
    md = [header_md(meta, [rel(files[k]) for k in ("results.csv", "buffer.csv") if k in files], a.seeds), ""]
    md += section_claims(a)
    md += section_main(a, out_dir, files)
    md += section_plane(a, out_dir, files, rel)
    md += section_fits(a, out_dir, files, rel)
    md += section_buffer(buf, out_dir, files, rel)
    md += section_ablations(a, out_dir, files, rel)
    md += section_regenerate(meta, files, out_dir, md_path)
    md += section_notes(a, buf)
    md_path.write_text("\n".join(md))
    files["md"] = md_path
    return files


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tms.repro.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results.csv of the toy reproduction driver")
    parser.add_argument("--buffer", default=None, help="buffer.csv (harvest diagnostics per checkpoint t)")
    parser.add_argument("--out", default="docs/toy_reproduction", help="directory for the PNGs and CSV tables")
    parser.add_argument("--md", default="docs/toy_reproduction.md", help="the markdown report to write")
    parser.add_argument("--meta", default=None,
                        help="meta.json (command, seeds, world, timings, git_commit, date) for the header; "
                             "write_report leaves one in --out")
    args = parser.parse_args(argv)
    meta = json.loads(Path(args.meta).read_text()) if args.meta else {
        "command": "(not recorded: rendered by python -m tms.repro.report without --meta)"}
    files = write_report(Path(args.results), Path(args.buffer) if args.buffer else None, Path(args.out),
                         Path(args.md), meta)
    for key, path in files.items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
