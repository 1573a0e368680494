"""What makes a killed training stage resume exactly where it stopped.

Lightning's ``last.ckpt`` already holds the weights, the optimiser and scheduler states and the loop
counters; the data module adds the data position (:mod:`tms.data.position`). This module adds

* :class:`RNGState`: the global RNG states (python, numpy, torch CPU and CUDA) at the checkpoint,
  restored when training restarts, so that dropout or any other draw from the global generators
  continues the stream of the uninterrupted run (our data order and target draws do not use them:
  they are seeded from ``(seed, epoch)``; harvest and RL generation from ``(seed, t, shard)`` /
  ``(seed, step)``);
* :class:`AtomicCheckpointIO`: checkpoints written to a temporary file in the same directory, fsynced
  and renamed, so a crash while saving leaves the previous ``last.ckpt`` intact. (Lightning's own
  write goes through ``fsspec`` to a file in ``$TMPDIR`` that is then *copied* when ``$TMPDIR`` is on
  another file system: a kill during the copy would leave a truncated ``last.ckpt``.)
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState(L.Callback):
    """Save the global RNG states in every checkpoint; restore them when training (re)starts.

    They are restored in ``on_train_start``, after the loaders are built and the model and
    optimisers are set up, i.e. right before the first resumed step.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.tmp-<pid>`` next to the target, fsync, then ``os.replace``.

    A write error (disk full, permissions) raises and leaves the previous checkpoint in place.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with tmp.open("wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
