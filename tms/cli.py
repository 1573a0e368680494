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


def setup(cfg: DictConfig, out: Path | None = None) -> Path:
    """Quiet third-party logs, expand the cache path, record the resolved config (without credentials) and seed.

    ``out``: the run directory (default: Hydra's output directory). In a multi-process job only rank 0 writes.
    """
    from tms import distributed
    from tms.io import write_json
    from tms.redact import redact
    from tms.tracking import prepare_logger

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "datasets"):
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


def run_training(cfg: DictConfig) -> dict[str, Any]:
    from tms import distributed
    from tms.evaluation.table import summary_table
    from tms.pipeline import run

    from tms.evaluation.wandb_log import log_results
    from tms.validation import validate

    validate(cfg)  # before anything is written
    with distributed.session(cfg.trainer):  # several processes (trainer=ddp/fsdp/...): start or join the ranks
        out = setup(cfg)
        results = run(cfg, out, validated=True)
        if not distributed.is_zero():
            return results
        log_results(cfg, results, out)
    table = summary_table(results["rows"], list(cfg.eval.get("retention") or []), str(cfg.eval.target))
    print(f"\n{table}\n")
    print(f"results:     {out / 'results.json'}")
    print(f"final model: {results['model']}")
    if (out / "checkpoints").exists():
        print(f"SFT checkpoints (T={cfg.sft.num_checkpoints}): {out / 'checkpoints'}")
    print(f"run dir:     {out}")
    return results


def run_harvest_only(cfg: DictConfig) -> Path:
    """``python harvest.py``: Stage 1 (cached) and the harvest of the checkpoints the target source needs.

    ``harvest.checkpoints`` (a list of t, 0 = θ0) overrides the source's choice. The buffer is
    exposed as ``<run_dir>/buffer/t=XXX`` (links to the cached per-checkpoint harvest stages), so
    ``tms.buffer.read_buffer(<run_dir>/buffer)`` reads all of H.
    """
    from hydra.utils import instantiate

    from tms import distributed
    from tms.buffer import read_buffer, t_dir
    from tms.pipeline import link, resolve_base, run_harvest, run_sft, stage1_indices
    from tms.validation import ConfigError, validate

    validate(cfg)  # before anything is written (harvest.checkpoints: integers in 0..T)
    T = int(cfg.sft.num_checkpoints)
    ts = cfg.harvest.get("checkpoints")
    ts = [int(t) for t in ts] if ts is not None else instantiate(cfg.data.target_source).required_checkpoints(T)
    if not ts:
        raise ConfigError("harvest.checkpoints: nothing to harvest, the target source needs no checkpoint; set "
                          "harvest.checkpoints=[...] (0 = θ0, 1..T = Stage 1's checkpoints) or a method that harvests")
    with distributed.session(cfg.trainer):  # a multi-process job: Stage 1 trains on every rank, the HF harvest is split
        out = setup(cfg)
        distributed.require_session(cfg.trainer)
        base = resolve_base(cfg)
        sft = run_sft(cfg, base) if any(t > 0 for t in ts) else None
        ts = list(stage1_indices(sft, T, ts).values())  # Stage 1's indices (differ from t with a shared grid, sft.grid)
        stages = run_harvest(cfg, base, sft, ts)
        if not distributed.is_zero():
            return out / "buffer"
    for t, stage in zip(ts, stages):
        link(t_dir(out / "buffer", t), t_dir(stage.dir, t))
    rows = read_buffer(out / "buffer").num_rows
    print(f"buffer: {out / 'buffer'}  ({rows} rows = {len(ts)} checkpoints x prompts x k)")
    return out / "buffer"
