"""Assertions shared by several test files."""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO, compose
from tms.data.datamodule import EpochSampler
from tms.core.errors import ConfigError


def assert_epoch_split_covers_every_example_once(n: int, world: int, seed: int = 3, epoch: int = 1) -> None:
    """The ``world`` rank shards of one epoch: the same number of steps on every rank, every example at least once,
    and only the padding repeats: the ``(-n) % world`` extra slots are filled by cycling through the epoch's
    permutation from its start (``n=1, world=4``: index 0 four times)."""
    shards = [EpochSampler(n, seed=seed, epoch=epoch, rank=r, world_size=world).indices() for r in range(world)]
    assert [len(s) for s in shards] == [-(-n // world)] * world  # ceil(n / world) steps on every rank
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(n))
    permutation = EpochSampler(n, seed=seed, epoch=epoch).indices()
    assert sorted(permutation) == list(range(n))
    padding = Counter(permutation[j % n] for j in range((-n) % world))
    assert {i: c - 1 for i, c in counts.items() if c > 1} == dict(padding)


def listing(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted ([] when it does not exist)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def invalid(tmp_path: Path, overrides, match: str, cache: Path | None = None, base=("experiment=smoke",),
            errors=(ConfigError,)) -> str:
    """Run the pipeline (:func:`tms.pipeline.run`) with ``overrides``; it must fail with ``errors`` whose message
    matches ``match`` before writing anything (the cache is unchanged, no run directory); returns the message."""
    from tms.pipeline import run

    cache = cache or tmp_path / "cache"
    before = listing(cache)
    cfg = compose([*base, f"cache_dir={cache}", *overrides])
    with pytest.raises(errors) as err:
        run(cfg, tmp_path / "run")
    assert re.search(match, str(err.value)), str(err.value)
    assert listing(cache) == before, "an invalid run must write nothing"
    assert not (tmp_path / "run").exists()
    return str(err.value)


def rl_config(**overrides):
    """An :class:`~tms.methods.rl_config.RLConfig` with the defaults of conf/method/grpo.yaml (their one home) and
    ``overrides``."""
    from tms.methods.rl_config import RLConfig

    return RLConfig.from_config({**_grpo_rl_block(), **overrides})


@functools.lru_cache(maxsize=1)
def _grpo_rl_block() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(["method=grpo"]).rl, resolve=True)


def train_smoke(cache: Path, run_dir: Path, *overrides: str) -> Path:
    """``python train.py experiment=smoke ...`` in a subprocess (one thread per process); returns the run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "train.py", "experiment=smoke", f"cache_dir={cache}", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


class Crash(RuntimeError):
    """A simulated kill of a training run."""


def crash_at_step(monkeypatch, module_cls, step: int, what: str = "step"):
    """Make ``module_cls.training_step`` raise :class:`Crash` at global step ``step``; returns the undo."""
    original = module_cls.training_step

    def crashing(self, batch, batch_idx):
        if self.global_step == step:
            raise Crash(f"killed before {what} {step + 1}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_cls, "training_step", crashing)
    return lambda: monkeypatch.setattr(module_cls, "training_step", original)


def assert_resumed_to_the_same_model(full, resumed, theta0_dir) -> None:
    """A stage ``resumed`` after a crash resumed, ends bit for bit with the uninterrupted ``full`` run's final weights,
    and those weights moved away from θ0's (``theta0_dir``)."""
    import torch
    from safetensors.torch import load_file

    from tms.stages.common import final_checkpoint

    assert resumed.manifest()["info"]["resumed"] is True
    a = load_file(str(Path(final_checkpoint(full).path) / "model.safetensors"))
    b = load_file(str(Path(final_checkpoint(resumed).path) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    theta0 = load_file(str(Path(theta0_dir) / "model.safetensors"))
    assert any(not torch.equal(a[k], theta0[k]) for k in a)
