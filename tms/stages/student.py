"""Stage 2: a student restarts from θ0 and trains on its target source's draws (TMS, Self-SFT, Final-SFT)."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.core.cache import Stage
from tms.core.keys import plain
from tms.stages.common import ModelRef, data_key, train_key
from tms.stages.harvest import load_buffer
from tms.stages.sft import train_stage


def run_student(cfg: DictConfig, base: ModelRef, source, harvests: list[Stage], T: int,
                relabel: dict[int, int] | None = None) -> Stage:
    """Stage 2: a student from θ0 on the target source's draws (same hyperparameters as Stage 1)."""
    key = {"base": base.identity, "data": data_key(cfg), "source": plain(cfg.data.target_source),
           "harvest": sorted(s.hash for s in harvests), "train": train_key(cfg), "T": T,
           "num_checkpoints": int(cfg.student.num_checkpoints), "seed": int(cfg.seed)}
    verified = bool(cfg.data.target_source.get("correct_only"))  # then the verifier's scores pick the targets
    subset = cfg.harvest.get("prompt_subset")
    buffer = load_buffer(harvests, relabel, int(subset) if subset else None,
                         instantiate(cfg.data.task) if verified else None) if harvests else None
    return train_stage(cfg, "student", key, base, source, buffer, T, int(cfg.student.num_checkpoints),
                       extra=("verifiers",) if verified else ())
