"""GPU paths (marker ``gpu``: skipped without CUDA): bf16 SFT with ``trainer=gpu``, seeded HF generation on CUDA,
and the vLLM backend writing the HF backend's buffer schema (also skipped unless vLLM is installed)."""
import math

import pytest

from tests.conftest import compose
from tms.core.io import read_json

pytestmark = pytest.mark.gpu


def toy_prompts(tokenizer_path: str, n: int = 32):
    from tms.data.formatting import prompt_ids
    from tms.models.loading import load_tokenizer
    from tms.toy.tasks import ToyTask

    task = ToyTask("sum", n_train=n, n_val=0, n_test=0, seed=0)
    tok = load_tokenizer(tokenizer_path)
    examples = task.examples("train")
    return task, examples, [prompt_ids(tok, task.messages(e)) for e in examples]


def test_smoke_sft_trains_in_bf16_on_one_gpu(smoke_cache, tmp_path):
    from tms.models.loading import load_model
    from tms.pipeline import run

    cfg = compose(["experiment=smoke", "method=sft", "trainer=gpu", f"cache_dir={smoke_cache}"])
    results = run(cfg, tmp_path)
    assert set(results["rows"]) >= {"base", "sft"}
    stage = tmp_path.joinpath(read_json(tmp_path / "pipeline.json")["stages"]["sft"]).resolve()
    manifest = read_json(stage / "manifest.json")
    assert manifest["key"]["train"]["precision"] == "bf16-mixed"
    plds = [e["pld"] for _, e in sorted(manifest["info"]["trajectory"]["checkpoints"].items(), key=lambda kv: int(kv[0]))]
    assert all(math.isfinite(p) for p in plds) and plds[-1] < plds[0]
    load_model(str(tmp_path / "model"), dtype="bfloat16")


def test_hf_generation_on_cuda_is_seeded(smoke_base):
    from tms.generation.base import SamplingParams
    from tms.generation.hf import HFGenerator

    _, _, prompts = toy_prompts(smoke_base)
    gen = HFGenerator.from_pretrained(smoke_base, batch_size=16, device="cuda", dtype="bfloat16")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16)
    a, b, c = (gen.generate(prompts, 2, sampling, seed=s) for s in (3, 3, 4))
    assert [x.text for x in a] == [x.text for x in b] and [x.text for x in a] != [x.text for x in c]


def test_vllm_harvest_writes_the_hf_buffer_schema(smoke_base, tmp_path):
    pytest.importorskip("vllm")
    from tms.data.buffer import read_buffer
    from tms.generation.base import SamplingParams
    from tms.generation.factory import make_generator
    from tms.generation.harvest import check_complete, harvest_checkpoint

    task, examples, prompts = toy_prompts(smoke_base)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16)
    infos = {}
    for backend in ("hf", "vllm"):
        make = lambda b=backend: make_generator(b, smoke_base, {"tensor_parallel_size": 1, "batch_size": 16,  # noqa: E731
                                                                 "gpu_memory_utilization": 0.3}, {"dtype": "bfloat16"}, 0)
        infos[backend] = harvest_checkpoint(make, task, examples, prompts, tmp_path / backend, t=1, step=1,
                                            sampling=sampling, k=2, seed=0, shard_size=16, progress=False)
        assert check_complete(tmp_path / backend, 1, [e.id for e in examples], 2)["rows"] == 2 * len(examples)
    hf, vllm = read_buffer(tmp_path / "hf"), read_buffer(tmp_path / "vllm")
    assert hf.schema.equals(vllm.schema) and hf.num_rows == vllm.num_rows
    print({b: i.get("completions_per_s") for b, i in infos.items()})  # throughput, reported by hand (pytest -s)
