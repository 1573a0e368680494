"""Sweep presets (conf/hparams), the shared Stage 1 of a T sweep, and `python train.py -m hparams=...` (~15 s each)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, compose
from tms.core.io import read_json


def sweep_params(preset: str) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"hparams={preset}"], return_hydra_config=True)
    return {"params": OmegaConf.to_container(cfg.hydra.sweeper.params), "callbacks": list(cfg.hydra.callbacks),
            "grid": cfg.sft.get("grid")}


def test_presets_sweep_the_papers_values():
    a, p, t = sweep_params("alpha"), sweep_params("p_t"), sweep_params("T")
    assert a["params"] == {"data.target_source.alpha": "0,0.1,0.25,0.5,0.75,1"}
    assert p["params"] == {"data.target_source.p_t": "uniform,early,late"}
    assert t["params"] == {"sft.num_checkpoints": "2,4,6,8,10,12"} and list(t["grid"]) == [2, 4, 6, 8, 10, 12]
    assert a["callbacks"] == p["callbacks"] == t["callbacks"] == ["sweep_report"]


def test_T_grid_is_the_union_of_the_equally_spaced_grids():
    from tms.training.callbacks import checkpoint_steps, grid_steps

    steps = grid_steps(78, [2, 4, 6, 8, 10, 12])  # Countdown: 10K / 256 x 2 epochs = 78 optimiser steps
    assert len(steps) == 24 and steps[-1] == 78
    for T in (2, 4, 6, 8, 10, 12):
        assert set(checkpoint_steps(78, T)) <= set(steps)


def test_a_T_subset_of_the_shared_stage1_is_the_stage1_of_that_T(smoke_cache):
    """Stage 1 with sft.grid=[2,3] (6 steps: checkpoints at 2,3,4,6) holds T=3's checkpoints (steps 2,4,6)
    bit for bit, and is shared by T=2 and T=3 (one key)."""
    from safetensors.torch import load_file

    from tms.stages.base_model import resolve_base
    from tms.stages.sft import run_sft, sft_key, stage1_indices

    grid3 = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "+sft.grid=[2,3]", "sft.num_checkpoints=3"])
    grid2 = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "+sft.grid=[2,3]", "sft.num_checkpoints=2"])
    plain = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "sft.num_checkpoints=3"])
    base = resolve_base(plain)
    assert sft_key(grid3, base) == sft_key(grid2, base) != sft_key(plain, base)
    shared, alone = run_sft(grid3, base), run_sft(plain, base)
    traj = shared.manifest()["info"]["trajectory"]
    assert [traj["checkpoints"][str(t)]["step"] for t in range(1, traj["T"] + 1)] == [2, 3, 4, 6]
    idx = stage1_indices(shared, 3, [0, 1, 2, 3])
    assert idx == {0: 0, 1: 1, 2: 3, 3: 4} and stage1_indices(shared, 2, [1, 2]) == {1: 2, 2: 4}
    assert stage1_indices(alone, 3, [1, 2, 3]) == {1: 1, 2: 2, 3: 3}
    for t in (1, 2, 3):
        a = load_file(str(shared.dir / "checkpoints" / f"t={idx[t]:02d}" / "model.safetensors"))
        b = load_file(str(alone.dir / "checkpoints" / f"t={t:02d}" / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), t


def test_the_harvest_of_a_checkpoint_does_not_depend_on_the_grid_that_numbered_it(smoke_cache):
    """The harvest seeds by the checkpoint's optimiser step, not by its index: the shared Stage 1's t=3 and the
    plain Stage 1's t=2 are the same weights (step 4) and get the same samples; another step gets others."""
    from tms.data.buffer import read_buffer
    from tms.stages.base_model import resolve_base
    from tms.stages.harvest import run_harvest
    from tms.stages.sft import run_sft

    grid3 = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "+sft.grid=[2,3]", "sft.num_checkpoints=3"])
    plain = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "sft.num_checkpoints=3"])
    base = resolve_base(plain)
    shared, alone = run_sft(grid3, base), run_sft(plain, base)
    (h_shared,), (h_alone, h_other) = run_harvest(grid3, base, shared, [3]), run_harvest(plain, base, alone, [2, 3])
    a, b, c = (read_buffer(h.dir) for h in (h_shared, h_alone, h_other))
    assert a.column("step").to_pylist()[0] == b.column("step").to_pylist()[0] == 4
    assert a.column("t").to_pylist()[0] == 3 and b.column("t").to_pylist()[0] == 2
    assert a.column("completion").to_pylist() == b.column("completion").to_pylist()
    assert a.column("completion").to_pylist() != c.column("completion").to_pylist()


def test_buffer_relabel_maps_stage1_indices_to_the_students_t(tmp_path):
    from tms.data.buffer import shard_path, write_shard
    from tms.core.cache import Stage
    from tms.stages.harvest import load_buffer

    stages = []
    for t in (3, 4):
        stage = Stage(tmp_path, "harvest", {"t": t})
        with stage.build() as (out, info):
            write_shard(shard_path(out, t, 0), {"example_id": ["a"], "prompt": ["p"], "t": [t], "step": [t],
                                                "sample_index": [0], "completion": [f"c{t}"], "num_tokens": [1],
                                                "finish_reason": ["stop"], "score": [1.0]})
        stages.append(stage)
    buf = load_buffer(stages, {3: 1, 4: 2})
    assert buf.checkpoints == [1, 2] and buf.samples(2, "a")[0][0] == "c4"


def multirun(*overrides: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "train.py", "-m", *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_alpha_sweep_trains_stage1_once_and_reports_every_alpha(smoke_cache, tmp_path):
    multirun("hparams=alpha", "experiment=smoke", f"cache_dir={smoke_cache}", f"hydra.sweep.dir={tmp_path}")
    jobs = sorted(p.parent for p in tmp_path.rglob("results.json"))  # override_dirname nests cache_dir's path
    assert len(jobs) == 6
    pipes = [read_json(j / "pipeline.json")["stages"] for j in jobs]
    assert len({p["sft"] for p in pipes if "sft" in p}) == 1  # one Stage 1 (α = 1 needs none, it reuses its row)
    assert len({tuple(sorted(p["harvest"].values())) for p in pipes if p["harvest"]}) == 1  # one harvest
    assert len({p["student"] for p in pipes}) == 6
    table = (tmp_path / "report" / "table.md").read_text()
    for alpha in ("0", "0.1", "0.25", "0.5", "0.75", "1"):
        assert f"| tms (α={alpha}) |" in table, alpha
    rows = [r for r in table.splitlines() if r.startswith("| tms")]
    assert len(rows) == 6


def test_T_sweep_shares_stage1_and_harvests(smoke_cache, tmp_path):
    multirun("hparams=T", "experiment=smoke", "sft.grid=[2,3]", "sft.num_checkpoints=2,3", f"cache_dir={smoke_cache}",
             f"hydra.sweep.dir={tmp_path}")
    jobs = sorted(p.parent for p in tmp_path.rglob("results.json"))
    pipes = [read_json(j / "pipeline.json")["stages"] for j in jobs]
    assert len(jobs) == 2 and len({p["sft"] for p in pipes}) == 1
    harvest = [set(p["harvest"].values()) for p in pipes]
    assert [len(h) for h in harvest] == [2, 3] and len(harvest[0] & harvest[1]) == 1  # the final checkpoint
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| tms (T=2) |" in table and "| tms (T=3) |" in table


def test_slurm_launcher_config_maps_the_trainer_to_slurm_resources():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the optional extra: pip install "tms[slurm]"
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8",
                                                "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
                            return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
