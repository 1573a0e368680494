"""θ0: a hub id or a local directory, a packaged GGUF file, or the toy world built here (a cached ``base`` stage)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from tms.core.distributed import single_process
from tms.core.keys import plain
from tms.models.gguf import convert_cached
from tms.stages.common import ModelRef, local_fingerprint
from tms.toy.world import build_base_model, toy_base_stage

log = logging.getLogger(__name__)


def resolve_base(cfg: DictConfig) -> ModelRef:
    """θ0: a hub id or local directory, a packaged GGUF file (``gguf``), or (``build``) the toy world built here."""
    m = cfg.model
    if m.get("name_or_path"):
        src = str(m.name_or_path)
        local = Path(os.path.expanduser(src))
        ident = local_fingerprint(src) if local.exists() else {"hub": src, "revision": m.get("revision")}
        return ModelRef(str(local) if local.exists() else src, ident)
    if m.get("gguf") is not None:  # a GGUF file in a pip package, converted once to an HF directory (tms.models.gguf)
        return ModelRef(*convert_cached(plain(m.gguf), cfg.cache_dir, reuse=str(cfg.get("cache_reuse") or "strict")))
    if m.get("build") is None:
        raise ValueError("model.name_or_path, model.gguf and model.build are all null: nothing to load θ0 from")
    def fill(out: Path, info: dict) -> None:  # rank 0 alone, one process: θ0 is part of the toy world, not of the job
        log.info("building the toy base model θ0 into %s", out)
        info.update(build_base_model(out, m.build, single_process(cfg.trainer), seed=int(m.build.seed)))

    stage = toy_base_stage(cfg).ensure(fill, seed=int(m.build.seed), ranks="zero")
    return ModelRef(str(stage.dir / "model"), {"stage": f"base/{stage.hash}"})
