"""Sweeps: the Hydra callback that writes a multirun's report when the sweep ends.

The presets in ``conf/hparams/`` (``alpha``, ``p_t``, ``T``) add it::

    python train.py -m hparams=alpha      # ... then <sweep dir>/report/{table.md,table.csv,*.png}

It runs :func:`tms.evaluation.report.report` over the sweep directory (every job's ``results.json``),
so the table has one row per swept value (labelled by what varies: α, p_t or T) plus the base model
and the SFT baseline. A failure to write the report is logged, not raised: the runs are done.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tms.evaluation.report import report

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """``on_multirun_end``: the evaluation report of the sweep into ``<sweep dir>/<subdir>``."""

    def __init__(self, subdir: str = "report") -> None:
        self.subdir = subdir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        try:
            files = report([sweep], sweep / self.subdir)
        except Exception as err:  # noqa: BLE001 - the sweep itself succeeded
            log.error("sweep report for %s failed: %s", sweep, err)
            return
        log.info("sweep report: %s", files["table.md"])
        print(Path(files["table.md"]).read_text())
