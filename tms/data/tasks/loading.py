"""One loader for every dataset: a Hugging Face hub id *or* a local file, through the same code.

``load_records(source, split=...)`` returns a list of plain dicts. ``source`` is either

* a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``) or a directory holding one file per
  split named ``<split>.<ext>``; or
* a hub dataset id such as ``openai/gsm8k`` (with an optional ``config_name`` such as ``main``).

Both go through :func:`datasets.load_dataset`, so a test that writes a small file in the dataset's
real schema exercises the same path as a run that reads the hub (which needs the network or a
populated HF cache; with ``HF_DATASETS_OFFLINE=1`` a missing hub dataset fails with datasets' own
error, which we re-raise naming the source).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _local_file(source: str, split: str | None) -> Path | None:
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return path
    if path.is_dir():
        if split is None:
            raise FileNotFoundError(f"{path} is a directory; a split name is needed to pick <split>.<ext> in it")
        for ext in _FORMATS:
            cand = path / f"{split}{ext}"
            if cand.is_file():
                return cand
        raise FileNotFoundError(
            f"no file for split {split!r} in {path}: expected one of "
            + ", ".join(f"{split}{e}" for e in _FORMATS)
        )
    if path.suffix in _FORMATS or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"data file {source!r} does not exist")
    return None


def load_records(
    source: str,
    split: str | None = None,
    config_name: str | None = None,
    required_fields: Sequence[str] = (),
    field_types: Mapping[str, type | tuple[type, ...]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``source`` (hub id or local file) as dicts, checking ``required_fields`` (and their ``field_types``).

    For a local *file* the ``split`` argument is ignored (the file is the split); for a directory
    it selects ``<split>.<ext>``; for a hub id it is passed to ``load_dataset``. An empty or
    unreadable local file raises a ValueError naming it.
    """
    import datasets

    local = _local_file(source, split)
    if local is not None:
        fmt = _FORMATS.get(local.suffix)
        if fmt is None:
            raise ValueError(f"unsupported data file type {local.suffix!r} for {local}; use one of {sorted(_FORMATS)}")
        if local.stat().st_size == 0:
            raise ValueError(f"data file {local} is empty")
        try:
            ds = datasets.load_dataset(fmt, data_files=str(local), split="train")
        except Exception as err:  # malformed JSON, mixed column types, ...: datasets' message names no file
            cause = err.__cause__ or err.__context__ or err
            raise ValueError(f"could not read data file {local} as {fmt}: {type(cause).__name__}: {cause}. Every row "
                             f"must be a complete record with the same fields and field types") from err
        where = str(local)
    else:
        try:
            ds = datasets.load_dataset(source, config_name, split=split)
        except Exception as err:  # network, missing config, offline mode ...
            raise RuntimeError(
                f"could not load dataset {source!r} (config {config_name!r}, split {split!r}) from the hub "
                f"or the HF cache: {err}. Pass a local .jsonl/.parquet file instead to run offline."
            ) from err
        where = f"{source}[{split}]"
    rows = [dict(r) for r in ds]
    if local is not None and not rows:
        raise ValueError(f"data file {local} has no rows")
    check_fields(rows, required_fields, where, field_types)
    return rows


def check_fields(rows: Iterable[dict], fields: Sequence[str], where: str,
                 types: Mapping[str, type | tuple[type, ...]] | None = None) -> None:
    """Raise a ValueError naming ``where``, the row and the field if a required field is missing
    or (for the fields in ``types``) has another type."""
    types = types or {}
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row or row[f] is None]
        if missing:
            raise ValueError(f"{where}: row {i} is missing required field(s) {missing}; present: {sorted(row)}")
        for f, expected in types.items():
            if f in row and row[f] is not None and not isinstance(row[f], expected):
                names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
                raise ValueError(f"{where}: row {i} field {f!r} has type {type(row[f]).__name__} "
                                 f"({str(row[f])[:40]!r}), expected {names}")


def apply_teacher_completions(examples: list, path: str | None) -> list:
    """Replace references with teacher completions from a jsonl file of ``{"id", "completion"}``.

    The paper trains SFT on teacher chain-of-thought (LLaMA-3.3-70B, filtered for correctness);
    this lets users bring such a file. Every example must have a teacher completion.
    """
    import dataclasses

    if not path:
        return examples
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise FileNotFoundError(f"teacher_completions file {path!r} does not exist")
    teacher: dict[str, str] = {}
    with file.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                teacher[str(rec["id"])] = str(rec["completion"])
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with 'id' and 'completion' ({err})") from err
    missing = [e.id for e in examples if e.id not in teacher]
    if missing:
        raise ValueError(f"teacher_completions {path!r} has no completion for {len(missing)} example(s), e.g. {missing[:3]}")
    return [dataclasses.replace(e, reference=teacher[e.id]) for e in examples]
