"""Experiment tracking with W&B (``logger=wandb``): grouped per sweep, the resolved config, nothing secret.

The training stages log through Lightning's ``WandbLogger`` exactly what they log to the CSV logger
(``self.log`` keys: ``train/loss``, ``train/lr``, ``val/pld``, ``train/tokens_per_s``, ...), so the
metric names are the same by construction. :func:`prepare_logger` (called once per run by
:func:`tms.cli.common.setup`) fills ``logger.group`` when it is null:

* in a Hydra multirun (``python train.py -m hparams=alpha``): the sweep directory, so every job's
  runs (every α) land in one group;
* in a single run: the run directory.

and records the resolved, redacted config (:func:`tms.core.redact.redact`) that :func:`logger_kwargs`
hands to every W&B run of the process. W&B's capture of the environment, the command line, the
host, git, the code, the installed packages and the console is switched off (:func:`wandb_settings`); credentials are read
by W&B from ``WANDB_API_KEY`` and never written into a config. ``WANDB_MODE=offline`` logs without a
network (``wandb sync`` uploads later); ``WANDB_DIR`` chooses where the run files go (default: the
stage directory, so that an offline run travels with its stage).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tms.core.redact import redact

#: how many completions each W&B table shows when ``log_samples`` (conf/train.yaml) does not say
LOG_SAMPLES = {"eval": 3, "harvest": 16, "rollouts": 0, "rollout_every": 0}


def log_samples(cfg: DictConfig, key: str) -> int:
    """``log_samples.<key>`` of the run (``eval``, ``harvest``, ``rollouts``, ``rollout_every``), else its default."""
    return int((cfg.get("log_samples") or {}).get(key, LOG_SAMPLES[key]))

_STATE: dict[str, Any] = {}


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger whose run records the run's resolved, redacted config (:func:`prepare_logger`)
    when it starts, and ends with its stage (``finalize``), so that the next stage (or the evaluation's logger)
    opens a run of its own instead of writing into this one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _STATE.get("config") is not None:
            kwargs.setdefault("config", _STATE["config"])  # handed to wandb.init when the run starts (lazily)
        super().__init__(*args, **kwargs)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def is_wandb(logger_cfg: Any) -> bool:
    """Whether the logger config is the W&B logger."""
    return bool(logger_cfg) and "wandb" in str(logger_cfg.get("_target_", "")).lower()


def wandb_settings() -> dict[str, Any]:
    """W&B settings (``wandb.init(settings=...)``) that record only what we log: no environment, command line,
    host, git, code, installed packages or console output."""
    return {"x_disable_meta": True, "x_disable_stats": True, "x_disable_machine_info": True, "disable_git": True,
            "disable_code": True, "save_code": False, "x_save_requirements": False, "console": "off",
            "disable_job_creation": True}


def run_group() -> str | None:
    """The sweep directory in a Hydra multirun, else the run directory (None outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else str(hc.runtime.output_dir)


def prepare_logger(cfg: DictConfig) -> None:
    """For W&B: set ``logger.group`` (if null) to :func:`run_group` and record the redacted resolved config."""

    _STATE.clear()
    if not is_wandb(cfg.get("logger")):
        return
    if cfg.logger.get("group") is None:
        group = run_group()
        if group is not None:
            cfg.logger.group = Path(group).as_posix()[-128:]  # W&B's limit on group names
    _STATE["config"] = redact(OmegaConf.to_container(cfg, resolve=True))
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        _STATE["job"] = HydraConfig.get().job.override_dirname or HydraConfig.get().job.name


def logger_kwargs(logger_cfg: Any, save_dir: Path, name: str) -> dict[str, Any]:
    """Extra arguments of a W&B logger for the stage ``name``: settings, job type, run name, directory."""
    if not is_wandb(logger_cfg):
        return {}
    out: dict[str, Any] = {"settings": wandb_settings(), "job_type": name,
                           "save_dir": os.environ.get("WANDB_DIR") or str(save_dir)}
    if logger_cfg.get("name") is None:
        out["name"] = f"{_STATE['job']}/{name}" if _STATE.get("job") else name
    return out

