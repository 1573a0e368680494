"""``model.cpu_bf16`` (tms.config.hardware.resolve_cpu_bf16): SmolLM2 on a CPU with AMX-BF16 trains bf16-mixed and
harvests from bf16 weights; without AMX, on a GPU trainer, for the toy or with ``model.cpu_bf16=false`` nothing
changes. The harvest's weights' dtype is in its stage key, and the HF generator loads them in it."""
import pytest
import torch

from tests.conftest import compose
from tms.config.hardware import resolve_cpu_bf16
from tms.core.errors import ConfigError


def smollm2(*extra):
    return compose(["model=smollm2-135m", "experiment=smollm2_small", *extra])


def test_smollm2_on_an_amx_cpu_trains_bf16_mixed_and_harvests_in_bf16():
    cfg = smollm2()
    assert cfg.trainer.precision == "32-true" and cfg.model.generation_dtype is None  # as composed
    assert resolve_cpu_bf16(cfg, amx=True)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.generation_dtype == "bfloat16"
    assert cfg.model.dtype == "float32"  # the trained weights and the optimiser state stay fp32


@pytest.mark.parametrize("why", ["no_amx", "opted_out", "toy", "gpu_trainer", "user_generation_dtype"])
def test_nothing_changes_without_amx_when_opted_out_for_the_toy_or_on_a_gpu(why):
    overrides = {"opted_out": ["model.cpu_bf16=false"], "gpu_trainer": ["trainer=gpu"],
                 "user_generation_dtype": ["model.generation_dtype=float32"]}.get(why, [])
    cfg = compose([]) if why == "toy" else smollm2(*overrides)
    before = (cfg.trainer.precision, cfg.model.get("generation_dtype"))
    chose = resolve_cpu_bf16(cfg, amx=why != "no_amx")
    if why == "user_generation_dtype":  # the training precision follows, the user's harvest dtype is kept
        assert chose and cfg.trainer.precision == "bf16-mixed" and cfg.model.generation_dtype == "float32"
        return
    assert not chose and (cfg.trainer.precision, cfg.model.get("generation_dtype")) == before


def test_the_harvest_key_holds_the_generation_dtype():
    from tms.stages.common import ModelRef
    from tms.stages.harvest import harvest_key

    cfg, ref = smollm2(), ModelRef("/m", {"id": "m"})
    fp32 = harvest_key(cfg, ref, 1)
    resolve_cpu_bf16(cfg, amx=True)
    bf16 = harvest_key(cfg, ref, 1)
    assert fp32["dtype"] == "float32" and bf16["dtype"] == "bfloat16" and fp32 != bf16


def test_the_hf_generator_samples_from_the_generation_dtype(smoke_base):
    from tms.generation.factory import make_generator

    gen = make_generator("hf", smoke_base, {"batch_size": 4}, {"dtype": "float32", "generation_dtype": "bfloat16"}, 0)
    assert next(gen.model.parameters()).dtype == torch.bfloat16
    gen = make_generator("hf", smoke_base, {"batch_size": 4}, {"dtype": "float32"}, 0)
    assert next(gen.model.parameters()).dtype == torch.float32


def test_a_bad_generation_dtype_or_cpu_bf16_is_refused_before_any_compute():
    from tms.config.inputs import check_model

    with pytest.raises(ConfigError, match="model.generation_dtype"):
        check_model(compose(["model.generation_dtype=float8"]))
    with pytest.raises(ConfigError, match="model.cpu_bf16"):
        check_model(compose(["model.cpu_bf16=maybe"]))
