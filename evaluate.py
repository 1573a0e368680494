"""Evaluate a model on the configured suite: ``python evaluate.py [model_path=DIR] [eval=paper] [key=value ...]``.

With no arguments: θ0 of the offline toy world on the toy suite. ``model_path`` takes a model
directory, a pipeline run directory or a hub id; ``checkpoints_of=<SFT run dir>`` also evaluates
SFT's T checkpoints (the curve of the report); ``buffer_of=<TMS run dir | harvest stage dir>`` writes
``buffer.json``, per-t diagnostics of the trajectory buffer (and the student ``model_path``'s NLL of each t's
samples). Writes ``results.json`` in the run directory.
Reports over run directories: ``python -m tms.evaluation.report RUN_DIR [RUN_DIR ...] --out DIR``.
"""
import logging

import hydra
from omegaconf import DictConfig

from tms.cli.evaluate import run_evaluation


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


if __name__ == "__main__":
    logging.getLogger("lightning").setLevel(logging.WARNING)
    main()
