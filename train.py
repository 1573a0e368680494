"""Run the post-training pipeline: ``python train.py [method=tms] [model=tiny] [key=value ...]``.

With no arguments: the TMS pipeline on the offline toy world (θ0 → SFT → harvest → student → eval).
"""
import logging

import hydra
from omegaconf import DictConfig

from tms.cli.train import objective, run_training


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``objective.metric`` of the run (None unless set): what a Hydra sweeper such as Optuna optimises."""
    return objective(cfg, run_training(cfg))


if __name__ == "__main__":
    logging.getLogger("lightning").setLevel(logging.WARNING)
    main()
