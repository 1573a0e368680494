"""Whether a model is sharded (FSDP1 / FSDP2), for the code that must then run collectives on every rank (generation).

No Lightning import: the generation backends use it.
"""
from __future__ import annotations

import torch


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or a submodule) is sharded by FSDP1 (``FullyShardedDataParallel``) or FSDP2 (``fully_shard``):
    its forward then all-gathers parameters, a collective every rank must join."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import FSDPModule
    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules())


def needs_synced_generation(model: torch.nn.Module) -> bool:
    """``generate``'s ``synced_gpus``: a sharded model in a multi-process job. A rank whose sequences have all
    finished must keep running forwards (each all-gathers the shards) until every rank has finished, or the others
    wait forever. transformers only detects FSDP1 wrappers and its own FSDP2 helper, not a plain ``fully_shard``."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and is_sharded(model)
