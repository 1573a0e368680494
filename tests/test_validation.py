"""Invalid configurations fail before any compute, with a message naming the key."""
import pytest

from tests.conftest import compose
from tms.validation import ConfigError, optimizer_steps, validate


def check(overrides, match, tmp_path):
    from tms.pipeline import run

    cfg = compose(["experiment=smoke", f"cache_dir={tmp_path / 'cache'}", *overrides])
    with pytest.raises((ConfigError, ValueError, FileNotFoundError, ImportError), match=match):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists(), "an invalid run must write nothing"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,match", [
    (["data.target_source.alpha=1.5"], r"data.target_source.alpha"),
    (["data.target_source.alpha=-0.2"], r"data.target_source.alpha"),
    (["data.target_source.p_t=[0.5,0.5]"], r"data.target_source.p_t.*2 weights given for 3"),
    (["data.target_source.p_t=[0.5,0.2,0.2]"], r"data.target_source.p_t.*sum to 1"),
    (["data.target_source.p_t=middle"], r"data.target_source.p_t"),
    (["data.target_source.checkpoints=[1,7]"], r"data.target_source.checkpoints"),
    (["sft.num_checkpoints=500"], r"sft.num_checkpoints.*optimiser steps"),
    (["sft.num_checkpoints=0"], r"sft.num_checkpoints"),
    (["harvest.samples_per_prompt=0"], r"harvest.samples_per_prompt"),
    (["harvest.top_p=0"], r"harvest.top_p"),
    (["harvest.backend=magic"], r"harvest.backend"),
    (["harvest.prompt_subset=100000"], r"harvest.prompt_subset"),
    (["sft.batch_size=0"], r"sft.batch_size"),
    (["model.name_or_path=/no/such/model"], r"model.name_or_path"),
    (["eval.target=nope"], r"eval.target"),
    (["method.kind=magic"], r"method.kind"),
])
def test_invalid_settings_fail_before_compute(overrides, match, tmp_path):
    check(overrides, match, tmp_path)


def test_vllm_backend_without_vllm_says_what_to_install(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    check(["harvest.backend=vllm"], r"pip install -e '.\[vllm\]'", tmp_path)


def test_optimizer_steps_counts_epochs_accumulation_and_ranks():
    assert optimizer_steps(100, 10, 1, 1, 2, -1) == 20
    assert optimizer_steps(100, 10, 2, 1, 1, -1) == 5
    assert optimizer_steps(101, 10, 1, 4, 1, -1) == 3  # 11 micro-batches -> 3 steps
    assert optimizer_steps(100, 10, 1, 1, 5, 7) == 7


def test_the_default_config_is_valid():
    validate(compose([]))
    validate(compose(["method=sft"]))
    validate(compose(["method=self_sft"]))
