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
