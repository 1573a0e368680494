"""``python harvest.py``: Stage 1 (cached) and the harvest of H[t, x] alone, exposed as ``<run_dir>/buffer``."""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.cli.common import setup
from tms.config.validate import validate
from tms.core import distributed
from tms.core.errors import ConfigError
from tms.data.buffer import read_buffer, t_dir
from tms.stages.base_model import resolve_base
from tms.stages.common import link
from tms.stages.harvest import run_harvest
from tms.stages.sft import run_sft, stage1_indices


def run_harvest_only(cfg: DictConfig) -> Path:
    """``python harvest.py``: Stage 1 (cached) and the harvest of the checkpoints the target source needs.

    ``harvest.checkpoints`` (a list of t, 0 = θ0) overrides the source's choice. The buffer is
    exposed as ``<run_dir>/buffer/t=XXX`` (links to the cached per-checkpoint harvest stages), so
    ``tms.data.buffer.read_buffer(<run_dir>/buffer)`` reads all of H.
    """
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
