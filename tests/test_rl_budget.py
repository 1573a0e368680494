"""RL's matched budget (appendix F.2): rl.prompts_per_step counts prompts over all devices and nodes, like
sft.effective_batch_size, so GRPO / REINFORCE take SFT's number of optimiser steps on any device count."""
import pytest
from hydra.utils import instantiate

from tests.conftest import compose


def steps_of(overrides):
    from tms.config.training import stage1_steps
    from tms.core.distributed import accumulation, world_size
    from tms.methods.rl_config import prompts_per_device, rollout_steps

    sft, rl = compose([*overrides, "method=sft"]), compose([*overrides, "method=grpo"])
    n = len(instantiate(sft.data.task).examples("train", sft.data.get("train_limit")))
    world = world_size(sft.trainer)
    return (world, stage1_steps(sft, n, world, accumulation(sft.sft, sft.trainer)), rollout_steps(rl, n, world),
            prompts_per_device(rl, world))


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_rl_takes_sfts_optimiser_steps_on_1_2_and_8_devices(devices):
    from tms.config.validate import validate

    trainer = ["trainer=ddp_cpu", f"trainer.devices={devices}"] if devices > 1 else []
    world, sft_steps, rl_steps, per_device = steps_of([*trainer, "model.batch_size=2"])  # accumulation 8 / 4 / 1
    assert world == devices
    assert rl_steps == sft_steps == 375  # 2000 prompts, 16 per optimiser step, 3 epochs
    assert per_device * devices == 16  # each rank samples its share of the rollout
    validate(compose([*trainer, "model.batch_size=2", "method=grpo"]))


def test_a_rollout_that_does_not_divide_over_the_devices_is_refused():
    from tms.config.validate import validate
    from tms.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^rl.prompts_per_step: 16 prompts per optimiser step .* do not divide "
                                          r"evenly over 3 device\(s\)"):
        validate(compose(["trainer=ddp_cpu", "trainer.devices=3", "model.batch_size=2", "method=grpo"]))
