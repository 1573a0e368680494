"""What every entry point does first: the run directory (Hydra's), quiet logs, the resolved config and the seed."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tms.core import distributed
from tms.core.io import write_json
from tms.core.redact import redact
from tms.core.tracking import prepare_logger


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def setup(cfg: DictConfig, out: Path | None = None) -> Path:
    """Quiet third-party logs, expand the cache path, record the resolved config (without credentials) and seed.

    ``out``: the run directory (default: Hydra's output directory). In a multi-process job only rank 0 writes.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets", "lm_eval"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg.cache_dir = os.path.expanduser(str(cfg.cache_dir))
    prepare_logger(cfg)  # W&B: the sweep's group and the resolved config
    out = Path(out) if out is not None else run_dir()
    if distributed.is_zero():
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True))), out / "config.resolved.yaml")
        write_json(out / "seed.json", {"seed": int(cfg.seed)})
    return out


