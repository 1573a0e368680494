"""What the entry points do after Hydra composed the config (kept out of the thin scripts)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("tms")


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def setup(cfg: DictConfig) -> Path:
    """Quiet third-party logs, expand the cache path, record the resolved config and seed."""
    from tms.io import write_json

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg.cache_dir = os.path.expanduser(str(cfg.cache_dir))
    out = run_dir()
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.resolved.yaml", resolve=True)
    write_json(out / "seed.json", {"seed": int(cfg.seed)})
    return out


def run_training(cfg: DictConfig) -> dict[str, Any]:
    from tms.evaluation.table import summary_table
    from tms.pipeline import run

    out = setup(cfg)
    results = run(cfg, out)
    table = summary_table(results["rows"], list(cfg.eval.get("retention") or []), str(cfg.eval.target))
    print(f"\n{table}\n")
    print(f"results:     {out / 'results.json'}")
    print(f"final model: {results['model']}")
    if (out / "checkpoints").exists():
        print(f"SFT checkpoints (T={cfg.sft.num_checkpoints}): {out / 'checkpoints'}")
    print(f"run dir:     {out}")
    return results
