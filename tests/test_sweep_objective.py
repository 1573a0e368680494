"""What train.py's main returns to a Hydra sweeper (objective.metric / floor): tms.evaluation.objective."""
import math

import pytest

from tests.conftest import compose
from tms.cli.train import objective
from tms.evaluation.objective import metric_value, objective_value

ROW = {"target": 0.8, "forgetting": -0.1, "retention": {"add": 0.9, "sort": 0.6}, "scores": {"add": 0.9},
       "kl_to_base": {"target": {"kl_seq": 1.5}}, "method": "tms"}


def test_metric_values_are_read_from_the_row():
    assert metric_value(ROW, "target") == 0.8 and metric_value(ROW, "forgetting") == -0.1
    assert metric_value(ROW, "retention_mean") == pytest.approx(0.75)
    assert metric_value(ROW, "scores.add") == 0.9 and metric_value(ROW, "kl_to_base.target.kl_seq") == 1.5
    with pytest.raises(KeyError, match="'retention' is not"):
        metric_value({"target": 1.0}, "retention")
    with pytest.raises(KeyError, match="retention benchmarks"):
        metric_value({"retention": {}}, "retention_mean")
    with pytest.raises(TypeError, match="not a number"):
        metric_value(ROW, "method")


def test_a_run_below_the_floor_is_a_failed_trial():
    assert objective_value(ROW, None) is None
    assert objective_value(ROW, "retention_mean", floor=0.7) == pytest.approx(0.75)
    assert math.isnan(objective_value(ROW, "retention_mean", floor=0.85))
    assert objective_value(ROW, "target", floor=0.9, floor_metric="scores.add") == 0.8  # 0.9 is not below 0.9
    assert math.isnan(objective_value(ROW, "target", floor=0.95, floor_metric="scores.add"))


def test_train_py_returns_the_configured_objective():
    cfg = compose(["experiment=smoke", "objective.metric=retention_mean", "objective.floor=0.5"])
    assert objective(cfg, ROW) == pytest.approx(0.75)
    assert objective(compose(["experiment=smoke"]), ROW) is None


@pytest.mark.timeout(600)
def test_the_optuna_sweeper_optimises_what_train_py_returns(smoke_cache, tmp_path):
    """hydra/sweeper=optuna over α on the smoke world: its best value is one trial's objective (from results.json)."""
    import json
    import subprocess
    import sys

    import yaml

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from tests.conftest import REPO

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "experiment=smoke", f"cache_dir={smoke_cache}", "hydra/sweeper=optuna",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize", "objective.metric=kl_to_base.target.kl_seq",
           "data.target_source.alpha=choice(0.0,1.0)", f"hydra.sweep.dir={sweep}"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=570)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [json.loads(p.read_text())["kl_to_base"]["target"]["kl_seq"] for p in sweep.rglob("results.json")]
    assert len(values) == 2 and best["best_value"] == pytest.approx(max(values))
