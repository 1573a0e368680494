"""Seeds derived from the run's one ``seed``: every stream (a harvest shard, an RL rollout, a sampled evaluation)
gets its own seed from integers that name it, so it does not depend on the order or the process it runs in."""
from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers."""
    return int(np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts]).integers(0, 2**63 - 1))
