"""Distributed strategy builders from config (``trainer.strategy``).

A plain string (``auto``, ``ddp``, ``ddp_spawn``) is passed to Lightning as is; a mapping with a
``_target_`` is instantiated by Hydra.
"""
from __future__ import annotations

from typing import Any


def build_strategy(spec: Any):
    if spec is None:
        return "auto"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and "_target_" in spec:
        from hydra.utils import instantiate

        return instantiate(spec)
    raise ValueError(f"trainer.strategy: expected a name or a mapping with _target_, got {spec!r}")
