"""The design card's command, `python train.py method=<m> model=<paper model>`, resolves to the paper recipe: a paper
target task, eval=paper, bf16 and a trainer chosen from the (simulated) GPUs; `python train.py` stays the toy world."""
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, compose

PAPER_MODELS = ["qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "llama3.2-1b", "llama3.1-8b"]


def resolved(overrides, gpus, vllm=False, monkeypatch=None):
    import tms.config.hardware as hw

    monkeypatch.setattr(hw, "local_gpus", lambda: gpus)
    monkeypatch.setattr(hw, "vllm_installed", lambda: vllm)
    cfg = compose(overrides)
    hw.resolve_hardware(cfg)
    return cfg


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_the_design_card_command_composes_the_paper_recipe(model):
    cfg = compose(["method=tms", f"model={model}"])
    assert cfg.data.name == "math" and cfg.eval.name == "paper" and cfg.eval.target == "math"
    assert cfg.model.dtype == "bfloat16" and cfg.model.name_or_path
    assert OmegaConf.to_container(cfg.trainer.auto) == {"single_gpu": "gpu", "multi_gpu": "fsdp", "multi_gpu_lora": "ddp"}


def test_several_gpus_get_fsdp_over_all_of_them_and_one_gpu_the_single_gpu_trainer(monkeypatch):
    eight = resolved(["method=tms", "model=qwen2.5-3b"], 8, monkeypatch=monkeypatch)
    assert eight.trainer.strategy._target_ == "tms.models.strategies.FSDP" and eight.trainer.devices == "auto"
    assert eight.trainer.precision == "bf16-mixed" and eight.trainer.accelerator == "gpu" and "auto" not in eight.trainer
    assert eight.trainer.strategy.layer_classes_from == "Qwen/Qwen2.5-3B-Instruct"  # interpolation kept, resolves
    one = resolved(["method=sft", "model=qwen2.5-3b"], 1, monkeypatch=monkeypatch)
    assert one.trainer.strategy == "auto" and one.trainer.devices == 1 and one.trainer.precision == "bf16-mixed"
    assert OmegaConf.to_container(one.trainer) == OmegaConf.to_container(compose(["trainer=gpu"]).trainer)


def test_lora_gets_ddp_on_several_gpus(monkeypatch):
    """FSDP1 is refused with LoRA (docs/lora.md): trainer=auto picks DDP there; one GPU is still trainer=gpu."""
    eight = resolved(["method=tms", "model=qwen2.5-3b", "+model.lora.r=16"], 8, monkeypatch=monkeypatch)
    assert OmegaConf.to_container(eight.trainer) == OmegaConf.to_container(compose(["trainer=ddp"]).trainer)
    one = resolved(["method=tms", "model=qwen2.5-3b", "+model.lora.r=16"], 1, monkeypatch=monkeypatch)
    assert OmegaConf.to_container(one.trainer) == OmegaConf.to_container(compose(["trainer=gpu"]).trainer)


def test_command_line_trainer_keys_apply_on_top_of_the_chosen_trainer(monkeypatch):
    cfg = resolved(["method=tms", "model=qwen2.5-3b", "trainer.num_nodes=2", "trainer.checkpoint_every_n_steps=7"], 8,
                   monkeypatch=monkeypatch)
    assert cfg.trainer.strategy._target_ == "tms.models.strategies.FSDP"
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.checkpoint_every_n_steps == 7


def test_task_eval_and_trainer_are_still_chosen_on_the_command_line(monkeypatch):
    cfg = resolved(["method=tms", "model=qwen2.5-3b", "data=gsm8k", "eval=toy", "trainer=fsdp2"], 8,
                   monkeypatch=monkeypatch)
    assert cfg.data.name == "gsm8k" and cfg.eval.name == "toy"
    assert cfg.trainer.strategy._target_ == "tms.models.strategies.FSDP2"
    forced = resolved(["method=tms", "model=qwen2.5-3b", "trainer=cpu"], 0, monkeypatch=monkeypatch)
    assert forced.trainer.accelerator == "cpu" and forced.data.name == "math"
    exp = resolved(["experiment=paper/qwen2.5-3b_countdown_grpo"], 0, monkeypatch=monkeypatch)  # experiments win
    assert exp.data.name == "countdown" and exp.trainer.strategy._target_ == "tms.models.strategies.FSDP2"


def test_the_default_run_is_still_the_toy_world_on_the_cpu(monkeypatch):
    cfg = resolved([], 8, vllm=True, monkeypatch=monkeypatch)
    assert cfg.model.name == "tiny" and cfg.data.name == "toy_sum" and cfg.eval.name == "toy"
    assert cfg.trainer.accelerator == "cpu" and cfg.harvest.backend == "hf"  # auto: hf for a CPU trainer


def test_the_harvest_backend_is_vllm_only_where_it_can_run(monkeypatch):
    card = ["method=tms", "model=qwen2.5-3b"]
    assert resolved(card, 8, vllm=True, monkeypatch=monkeypatch).harvest.backend == "vllm"
    assert resolved(card, 8, vllm=False, monkeypatch=monkeypatch).harvest.backend == "hf"
    assert resolved([*card, "harvest.backend=hf"], 8, vllm=True, monkeypatch=monkeypatch).harvest.backend == "hf"


def test_without_cuda_the_design_card_command_stops_before_loading_weights():
    from tms.config.validate import validate
    from tms.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^trainer: model=qwen2.5-3b .* needs a CUDA GPU.* trainer=cpu"):
        validate(compose(["method=tms", "model=qwen2.5-3b"]))


def test_python_train_py_with_a_paper_model_on_a_cpu_machine_says_how_to_force_a_cpu_run(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "train.py", "method=tms", "model=qwen2.5-3b", f"cache_dir={tmp_path}/c",
                           f"hydra.run.dir={tmp_path}/run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr and "trainer=cpu" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "c").exists()  # nothing cached, no weights loaded
