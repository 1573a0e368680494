r"""Diagnostics of a trajectory buffer H[t, x], one row per checkpoint t (``buffer.json``).

For the rows of checkpoint t (every harvested prompt x and sample k of :mod:`tms.data.buffer`),
:func:`buffer_diagnostics` gives

* ``n``: the number of rows;
* ``accuracy`` :math:`= \frac{1}{n}\sum_{x,k} \mathbb{1}[\mathrm{score}_{t,x,k} \ge 0.5]` (the verifier's score
  recorded by the harvest; rows without a score are left out, None when no row has one);
* ``mean_tokens``: the mean ``num_tokens`` (generated tokens, eos included when generated);
* ``finished``: the share of rows with ``finish_reason == "stop"`` (eos generated; the HF and vLLM
  backends both write ``"stop"``, else ``"length"``);
* ``format_share`` = {format: share} when a ``format_of(completion) -> str | None`` is given (a task's
  :meth:`~tms.data.tasks.base.Task.solution_format`): over the rows whose format is not None, the share
  of each format seen anywhere in the buffer (zeros included, so every t has the same keys; the shares
  of a t sum to 1). No ``format_share`` key when ``format_of`` is None or returns None for every row.

:func:`student_pld` adds, for a given model (the student), the NLL of each t's buffered completions,
tokenised as in training (:func:`tms.evaluation.suite.completion_nll`, the code of the held-out PLD):
``pld`` :math:`= -\frac{1}{N_t}\sum_{(x,k)} \log\pi(H[t,x,k] \mid x)` and ``nll_token`` (the same sum per
token), i.e. how far the student is from each checkpoint's samples.

:func:`buffer_report` does both for harvest stage directories and writes ``buffer.json``;
``python evaluate.py buffer_of=<run dir | harvest stage dir | [dirs]> [model_path=<student>]`` calls it
(:func:`tms.cli.evaluate.evaluate`). Post-processing, not a cached stage: nothing here is hashed.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from tms.core.io import read_json, write_json
from tms.data.buffer import SCHEMA, read_buffer, with_t
from tms.evaluation.metrics import CORRECT_THRESHOLD
from tms.evaluation.suite import completion_nll
from tms.generation.harvest import rescore
from tms.models.loading import load_model, load_tokenizer

FINISHED = "stop"  # finish_reason of a completion that generated eos (tms/generation/hf.py, vllm.py)


def rows_by_t(table: pa.Table) -> dict[int, list[dict[str, Any]]]:
    """The rows of a buffer table as dicts, grouped by t (ascending), in the table's order within a t."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():
        out[int(row["t"])].append(row)
    return dict(sorted(out.items()))


def buffer_diagnostics(table: pa.Table, format_of: Callable[[str], str | None] | None = None) -> list[dict[str, Any]]:
    """One dict per checkpoint t of ``table`` (a :data:`tms.data.buffer.SCHEMA` table), ascending in t: ``t``, ``n``,
    ``accuracy``, ``mean_tokens``, ``finished`` and, with formats, ``format_share`` (see the module docstring)."""
    groups = rows_by_t(table)
    formats = {t: [format_of(r["completion"]) for r in rows] for t, rows in groups.items()} if format_of else {}
    seen = sorted({f for fs in formats.values() for f in fs if f is not None})
    out = []
    for t, rows in groups.items():
        scores = [float(r["score"]) for r in rows if r["score"] is not None]
        rec: dict[str, Any] = {
            "t": t, "n": len(rows),
            "accuracy": math.fsum(s >= CORRECT_THRESHOLD for s in scores) / len(scores) if scores else None,
            "mean_tokens": math.fsum(int(r["num_tokens"]) for r in rows) / len(rows),
            "finished": sum(r["finish_reason"] == FINISHED for r in rows) / len(rows),
        }
        if seen:
            named = [f for f in formats[t] if f is not None]
            rec["format_share"] = {f: named.count(f) / len(named) for f in seen} if named else None
        out.append(rec)
    return out


def _rows(rows: pa.Table | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return rows.to_pylist() if isinstance(rows, pa.Table) else list(rows)


def student_pld(model, tokenizer, task, rows_by_t: Mapping[int, pa.Table | Sequence[Mapping[str, Any]]],
                limit: int | None = None, split: str = "train", batch_size: int = 32) -> dict[int, dict[str, Any]]:
    """``{t: {"pld", "nll_token", "n"}}``: the NLL under ``model`` of each t's buffered completions.

    ``rows_by_t[t]``: that checkpoint's buffer rows (a table or dicts with ``example_id`` and ``completion``);
    only the first ``limit`` rows of each t when given (the buffer's order: by example, then sample). Each
    row's prompt is its example of ``task``'s ``split`` (the harvest samples the training prompts), formatted
    and scored exactly as :func:`tms.evaluation.suite.reference_nll` scores a reference
    (:func:`tms.evaluation.suite.completion_nll`). A t without rows is left out.
    """

    by_id = {e.id: e for e in task.examples(split)}
    out: dict[int, dict[str, Any]] = {}
    for t, rows in sorted(rows_by_t.items()):
        rows = _rows(rows)[: None if limit is None else int(limit)]
        if not rows:
            continue
        missing = sorted({r["example_id"] for r in rows} - set(by_id))
        if missing:
            raise KeyError(f"student_pld: t={t}: example ids {missing[:3]} (of {len(missing)}) are not in task "
                           f"{task.name!r}'s {split} split; pass the task the buffer was harvested for")
        out[int(t)] = completion_nll(model, tokenizer, task, [by_id[r["example_id"]] for r in rows],
                                     [r["completion"] for r in rows], batch_size=batch_size)
    return out


class _StageDir:
    """A finished stage directory, as :func:`tms.generation.harvest.rescore` reads it (its manifest)."""

    def __init__(self, path: Path) -> None:
        self.dir = path

    def manifest(self) -> dict[str, Any]:
        return read_json(self.dir / "manifest.json")

    def __str__(self) -> str:
        return str(self.dir)


def _ts_in(directory: Path) -> list[int]:
    return sorted(int(d.name.split("=", 1)[1]) for d in directory.glob("t=*") if d.is_dir())


def read_buffers(buffer_dirs: Mapping[int, str | Path], task=None) -> pa.Table:
    """The rows of every directory of ``buffer_dirs`` = {t: harvest stage dir}, with ``t`` set to the key.

    A pipeline run lists the harvest stages by the *student's* t (``pipeline.json``), while a stage's rows
    carry the Stage 1 checkpoint index it sampled (they differ for a T-subset of a shared grid), so the key
    wins, as in :func:`tms.stages.harvest.load_buffer`. With ``task``, a stage harvested under another verifier is
    re-scored (:func:`tms.generation.harvest.rescore`).
    """

    tables = []
    for t, d in sorted(buffer_dirs.items()):
        d = Path(os.path.expanduser(str(d)))
        table = read_buffer(d)
        if table.num_rows == 0:
            raise FileNotFoundError(f"buffer t={t}: no shards (t=*/shard-*.parquet) in {d}")
        if (d / "manifest.json").is_file():
            table = rescore(table, _StageDir(d), task)
        tables.append(with_t(table, [int(t)] * table.num_rows))
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def buffer_dirs_of(paths: str | Path | Sequence[str | Path]) -> dict[int, Path]:
    """``{t: harvest stage dir}`` of ``buffer_of``: a pipeline run directory (its ``pipeline.json``'s
    ``stages.harvest`` = {"t=<t>": dir}), a harvest stage directory or a buffer directory (t from its
    ``t=<t>`` subdirectories; one t per harvest stage), or a list of them (a t given twice raises)."""
    out: dict[int, Path] = {}
    for raw in [paths] if isinstance(paths, (str, Path)) else list(paths):
        p = Path(os.path.expanduser(str(raw)))
        if (p / "pipeline.json").is_file():
            harvest = (read_json(p / "pipeline.json").get("stages") or {}).get("harvest") or {}
            if not harvest:
                raise FileNotFoundError(f"buffer_of={raw}: the run's pipeline.json lists no harvest stage "
                                        "(only Stage 2 methods harvest: tms, self_sft, final_sft)")
            found = {int(k.split("=", 1)[1]): Path(v) for k, v in harvest.items()}
        elif ts := _ts_in(p):
            found = {t: p for t in ts}
        else:
            raise FileNotFoundError(f"buffer_of={raw}: neither a run directory (pipeline.json) nor a harvest "
                                    "stage / buffer directory (t=*/ subdirectories)")
        if len(found) > 1 and len(set(found.values())) == 1:  # one buffer directory holding several t
            raise ValueError(f"buffer_of={raw}: a directory with several t=* subdirectories; pass one per t "
                             "(buffer_report takes {t: dir})")
        twice = sorted(set(found) & set(out))
        if twice:
            raise ValueError(f"buffer_of: t={twice} given twice ({raw})")
        out.update(found)
    return dict(sorted(out.items()))


def buffer_report(buffer_dirs: Mapping[int, str | Path], model_path: str | None, task,
                  out: str | Path | None = None, limit: int | None = None,
                  model_kwargs: Mapping[str, Any] | None = None, batch_size: int = 32,
                  device: str | None = None) -> dict[str, Any]:
    """Diagnostics of the harvest stages ``buffer_dirs`` = {t: dir} (a TMS run's ``pipeline.json``
    ``stages.harvest``), with the student PLD of ``model_path`` when given; written to ``out`` if given.

    Returns ``{"per_t": [buffer_diagnostics rows, each + "student_pld" = {"pld", "nll_token", "n"} with a
    model], "buffer_dirs": {t: dir}, "student": model_path, "limit": limit}``. ``task``: the training task
    the buffer was harvested for (prompts, stale-score re-scoring, :meth:`Task.solution_format`);
    ``limit``: rows per t scored for the student PLD (the diagnostics use every row); ``model_kwargs``:
    :func:`tms.models.loading.load_model` arguments (``dtype``, ``trust_remote_code`` ...).
    """
    table = read_buffers(buffer_dirs, task)
    per_t = buffer_diagnostics(table, task.solution_format)
    if model_path:
        import torch

        kw = dict(model_kwargs or {})
        tok = load_tokenizer(model_path, trust_remote_code=bool(kw.get("trust_remote_code", False)))
        model = load_model(model_path, **kw).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pld = student_pld(model, tok, task, rows_by_t(table), limit=limit, batch_size=batch_size)
        for rec in per_t:
            rec["student_pld"] = pld.get(rec["t"])
        del model
    result = {"per_t": per_t, "buffer_dirs": {str(t): str(d) for t, d in sorted(buffer_dirs.items())},
              "student": model_path, "limit": limit}
    if out is not None:
        write_json(Path(out), result)
    return result
