"""logger=wandb offline: the CSV logger's metric names, grouped per sweep, the resolved config, no secrets."""
from pathlib import Path

from tests.conftest import compose


def test_wandb_offline_run_matches_csv_and_leaks_nothing(smoke_cache, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    from tms.stages.base_model import resolve_base
    from tms.stages.sft import run_sft
    from tms.core.tracking import prepare_logger

    secret, marker = "wandb-secret-0123456789abcdef", "env-marker-5417-zyx"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("TMS_TEST_MARKER", marker)
    (tmp_path / "wandb").mkdir()
    seen: set[str] = set()
    original = WandbLogger.log_metrics

    def record(self, metrics, step=None):
        seen.update(metrics)
        return original(self, metrics, step)

    monkeypatch.setattr(WandbLogger, "log_metrics", record)
    common = ["experiment=smoke", f"cache_dir={smoke_cache}", "method=sft", "sft.num_checkpoints=2"]
    csv = run_sft(cfg := compose([*common, "seed=7"]), resolve_base(cfg))  # seeds: two distinct Stage 1 runs
    cfg = compose([*common, "seed=8", "logger=wandb", "logger.group=sweep-42"])
    prepare_logger(cfg)
    run_sft(cfg, resolve_base(cfg))
    import wandb

    assert wandb.run is None  # the stage's run ended with the stage (tms.core.tracking.WandbLogger.finalize)

    header = set((csv.dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(","))
    assert {"train/loss", "train/lr", "val/pld", "train/tokens_per_s"} <= seen
    assert seen | {"step"} == header | {"epoch"}  # the same names (CSV adds its step column)
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for name in (b"sweep-42", b"train/loss", b"val/pld", b"effective_batch_size"):  # group, metrics, the config
        assert name in records, name
    for path in Path(tmp_path / "wandb").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and marker.encode() not in data, path
    assert not list(runs[0].rglob("requirements.txt"))


def test_sweep_group_is_the_multirun_directory(monkeypatch):
    from hydra.types import RunMode

    from tms.core import tracking

    class HC:
        mode = RunMode.MULTIRUN
        sweep = type("S", (), {"dir": "multirun/2026-11-25/10-00-00"})
        runtime = type("R", (), {"output_dir": "multirun/2026-11-25/10-00-00/3_alpha=0.5"})
        job = type("J", (), {"override_dirname": "alpha=0.5", "name": "train"})

    monkeypatch.setattr("hydra.core.hydra_config.HydraConfig.initialized", staticmethod(lambda: True))
    monkeypatch.setattr("hydra.core.hydra_config.HydraConfig.get", staticmethod(lambda: HC))
    cfg = compose(["experiment=smoke", "logger=wandb"])
    tracking.prepare_logger(cfg)
    assert cfg.logger.group == "multirun/2026-11-25/10-00-00"
    kwargs = tracking.logger_kwargs(cfg.logger, Path("/stage"), "student")
    assert kwargs["name"] == "alpha=0.5/student" and kwargs["job_type"] == "student"


def wandb_tables(root: Path, key: str) -> list[dict]:
    """The W&B tables ``key`` an offline run wrote (media/table/<key>_*.table.json)."""
    import json

    return [json.loads(p.read_text()) for p in sorted(root.rglob(f"{key}_*.table.json"))]


def test_harvest_samples_rollouts_and_eval_samples_reach_wandb_offline(smoke_cache, tmp_path, monkeypatch):
    """A TMS run logs a harvest_samples table (log_samples.harvest rows per t) and the eval samples; a GRPO run logs
    a rollouts table every log_samples.rollout_every rollouts (log_samples.rollouts rows, with reward and advantage)."""
    from tms.pipeline import run
    from tms.evaluation.wandb_log import log_results

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    common = ["experiment=smoke", f"cache_dir={smoke_cache}", "logger=wandb", "log_samples.eval=2",
              "log_samples.harvest=3", "log_samples.rollouts=4", "log_samples.rollout_every=2"]
    tms_cfg = compose([*common, "method=tms", "sft.num_checkpoints=2"])
    results = run(tms_cfg, tmp_path / "tms")
    log_results(tms_cfg, results, tmp_path / "tms")
    (harvest,) = wandb_tables(tmp_path, "harvest_samples")
    assert harvest["columns"] == ["t", "step", "prompt", "completion", "score", "tokens"]
    assert sorted({row[0] for row in harvest["data"]}) == [1, 2] and len(harvest["data"]) == 2 * 3  # T=2, 3 each
    (samples,) = wandb_tables(tmp_path, "samples")
    per_bench = {}
    for model, bench, *_ in samples["data"]:
        per_bench[(model, bench)] = per_bench.get((model, bench), 0) + 1
    assert set(per_bench.values()) == {2}

    grpo_cfg = compose([*common, "method=grpo", "rl.max_steps=4", "rl.num_generations=4", "rl.prompts_per_step=8"])
    run(grpo_cfg, tmp_path / "grpo")
    from tms.core.io import read_json

    stage = Path(read_json(tmp_path / "grpo" / "pipeline.json")["stages"]["rl"])
    rollouts = wandb_tables(tmp_path, "rollouts") + wandb_tables(stage, "rollouts")
    assert len(rollouts) == 2  # rollouts 0 and 2 of 4
    assert rollouts[0]["columns"] == ["rollout", "prompt", "completion", "reward", "advantage", "tokens"]
    assert all(len(t["data"]) == 4 for t in rollouts) and {t["data"][0][0] for t in rollouts} == {0, 2}
    assert all(row[3] in (0.0, 1.0) for t in rollouts for row in t["data"])
