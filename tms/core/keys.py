"""Config nodes as cache keys: a plain copy of a node, and the cached stage of a run's config."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from tms.core.cache import Stage


def plain(node: Any) -> Any:
    """Resolved plain-Python copy of a config node (for stage keys and manifests)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def stage(cfg: DictConfig, name: str, key: dict[str, Any], extra: tuple[str, ...] = ()) -> Stage:
    """The cached stage ``name`` with config ``key`` under ``cfg.cache_dir``, reused as ``cfg.cache_reuse`` says."""
    return Stage(cfg.cache_dir, name, key, reuse=str(cfg.get("cache_reuse") or "strict"), extra=extra)
