"""Harvest the trajectory buffer H[t, x]: ``python harvest.py [harvest.backend=vllm] [harvest.checkpoints=[1,5,10]]``.

Runs (or reuses) Stage 1 SFT and samples k completions per training prompt at each checkpoint.
"""
import hydra
from omegaconf import DictConfig

from tms.cli.harvest import run_harvest_only


@hydra.main(version_base="1.3", config_path="conf", config_name="harvest")
def main(cfg: DictConfig) -> None:
    run_harvest_only(cfg)


if __name__ == "__main__":
    main()
