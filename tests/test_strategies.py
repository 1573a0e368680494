"""Strategy builders: trainer=fsdp / fsdp2 / ddp compose and build without a GPU; FSDP2 sharding and export on CPU."""
import json

import pytest
import torch

from tests.conftest import compose
from tms.core.keys import plain
from tms.models.strategies import FSDP, FSDP2, build_strategy

QWEN25_3B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 2048,
             "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
             "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
             "rope_theta": 1000000.0, "torch_dtype": "bfloat16"}
LLAMA31_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": False,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16"}


def config_dir(tmp_path, config: dict):
    """A model directory holding only ``config.json`` (no weights: the hub is offline in tests)."""
    d = tmp_path / config["model_type"]
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_fsdp_for_qwen25_3b_builds_from_the_config_alone(tmp_path):
    from torch.distributed.fsdp import ShardingStrategy
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    cfg = compose(["trainer=fsdp", "model=qwen2.5-3b", f"model.name_or_path={config_dir(tmp_path, QWEN25_3B)}"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    strategy = build_strategy(plain(cfg.trainer.strategy))
    assert isinstance(strategy, FSDP)
    assert strategy.layer_classes == {Qwen2DecoderLayer}
    assert strategy.wrap_policy()._module_classes == {Qwen2DecoderLayer}
    mp = strategy.mixed_precision
    assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (torch.bfloat16, torch.float32, torch.bfloat16)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy._state_dict_type == "sharded"
    assert strategy.master_dtype == "float32" and strategy.activation_checkpointing  # qwen2.5-3b checkpoints
    assert strategy.shards_parameters and strategy.kwargs["use_orig_params"]


def test_fsdp_finds_the_llama_layer_and_defers_when_the_config_is_unavailable(tmp_path):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    cfg = compose(["trainer=fsdp", "model=llama3.1-8b", f"model.name_or_path={config_dir(tmp_path, LLAMA31_8B)}"])
    assert build_strategy(plain(cfg.trainer.strategy)).layer_classes == {LlamaDecoderLayer}
    offline = compose(["trainer=fsdp", "model=llama3.1-8b"])  # a hub id, hub offline: found from the loaded model
    assert build_strategy(plain(offline.trainer.strategy)).layer_classes is None


@pytest.mark.parametrize("name,cls", [("fsdp2", FSDP2), ("fsdp2_cpu", FSDP2), ("ddp", None), ("ddp_cpu", None)])
def test_other_trainers_build(name, cls):
    from lightning.pytorch.strategies import DDPStrategy

    from tms.core.distributed import world_size

    cfg = compose([f"trainer={name}", "model=tiny"])
    strategy = build_strategy(plain(cfg.trainer.strategy))
    assert isinstance(strategy, cls or DDPStrategy)
    if name.endswith("_cpu"):
        assert cfg.trainer.accelerator == "cpu" and world_size(cfg.trainer) == 2


def tiny_qwen(tie: bool = True):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie))


def test_tied_aliases_and_activation_checkpointing_keep_the_gradients():
    from tms.models.strategies import apply_activation_checkpointing, tied_aliases
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    assert tied_aliases(tiny_qwen(tie=True)) == {"lm_head.weight"} and tied_aliases(tiny_qwen(tie=False)) == set()
    ids = torch.randint(0, 64, (2, 8))
    grads = []
    for checkpointing in (False, True):
        model = tiny_qwen()
        if checkpointing:
            apply_activation_checkpointing(model, {Qwen2DecoderLayer})
            assert "_checkpoint_wrapped_module" in next(n for n, _ in model.named_modules() if "layers.0" in n and "_c" in n)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_fsdp2_shards_each_layer_and_exports_the_full_model(tmp_path):
    """One gloo process: fully_shard per decoder layer + root; the gathered export equals the unsharded weights and
    reloads with save_pretrained's layout (no duplicated tied lm_head)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from transformers import AutoModelForCausalLM

    from tms.models.strategies import full_state_dict

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        strategy = FSDP2(master_dtype=None)
        strategy._device_mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
        reference = {k: v.clone() for k, v in tiny_qwen().state_dict().items()}
        model = strategy.shard_module(tiny_qwen())
        assert isinstance(model, FSDPModule) and all(isinstance(layer, FSDPModule) for layer in model.model.layers)
        state = full_state_dict(strategy, model)
        assert "lm_head.weight" not in state and all(torch.equal(state[k], reference[k]) for k in state)
        model.save_pretrained(str(tmp_path / "export"), state_dict=state)
        back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"))
        assert all(torch.equal(back.state_dict()[k], reference[k]) for k in reference)
        assert full_state_dict(object(), model) is None  # unsharded strategies export as before
    finally:
        dist.destroy_process_group()
