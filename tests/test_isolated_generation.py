"""One generator per process (what the vLLM backend runs in), tested through the HF backend behind the same
interface: the same completions as in-process, the process ends on close(), errors come back with the child's
traceback, the job's rank variables stay out of the child; evaluation through another engine gives the same numbers;
vLLM's dtype names and limits are checked before any compute."""
import os

import pytest

from tests.conftest import compose
from tms.generation.base import Completion, SamplingParams


class EnvProbe:
    """A backend that answers with the rank variables it sees."""

    def __init__(self, fail: bool = False):
        if fail:
            raise ValueError("this backend cannot start")

    def generate(self, prompts, n, sampling, seed):
        seen = ",".join(f"{k}={os.environ.get(k)}" for k in ("RANK", "MASTER_PORT"))
        return [Completion(prompt_index=i, sample_index=0, text=seen, token_ids=[], finish_reason="stop")
                for i in range(len(prompts))]

    def close(self):
        pass


def test_an_isolated_hf_generator_gives_the_in_process_completions(smoke_base):
    from tms.generation.factory import make_generator
    from tms.models.loading import load_tokenizer

    tok = load_tokenizer(smoke_base)
    prompts = [tok(f"sum {a} {a + 3} {a + 5}")["input_ids"] for a in range(6)]
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)
    cfg = {"batch_size": 4}
    local = make_generator("hf", smoke_base, cfg, {"dtype": "float32"}, seed=0)
    isolated = make_generator("hf", smoke_base, cfg, {"dtype": "float32"}, seed=0, isolated=True)
    try:
        assert isolated.pid != os.getpid() and isolated.tokenizer is not None
        assert isolated.generate(prompts, 2, sampling, seed=5) == local.generate(prompts, 2, sampling, seed=5)
    finally:
        proc = isolated._proc
        isolated.close()
        local.close()
    assert not proc.is_alive() and proc.exitcode == 0
    with pytest.raises(RuntimeError, match="after close"):
        isolated.generate(prompts, 1, sampling, seed=0)


def test_a_child_that_cannot_start_raises_with_its_traceback():
    from tms.generation.isolated import IsolatedGenerator

    with pytest.raises(RuntimeError, match=r"(?s)while building the generator.*ValueError: this backend cannot start"):
        IsolatedGenerator(EnvProbe, fail=True)


def test_the_child_does_not_see_the_jobs_rank_variables(monkeypatch):
    from tms.generation.isolated import IsolatedGenerator

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("MASTER_PORT", "12345")
    gen = IsolatedGenerator(EnvProbe)
    try:
        assert gen.generate([[1]], 1, SamplingParams(), seed=0)[0].text == "RANK=None,MASTER_PORT=None"
    finally:
        gen.close()
    assert os.environ["RANK"] == "3"  # the parent's environment is untouched


def test_evaluation_through_another_engine_gives_the_same_numbers(smoke_cache, smoke_base):
    """evaluate_model's greedy scores and Pass@k samples through an isolated engine (what eval.backend=vllm uses)
    equal the in-process HF evaluation; KL and PLD stay on HF."""
    from hydra.utils import instantiate

    from tms.generation.factory import make_generator
    from tms.evaluation.suite import evaluate_model
    from tms.stages.evaluation import eval_tasks

    cfg = compose(["experiment=smoke", f"cache_dir={smoke_cache}", "eval.limit=8", "eval.sampling.limit=4",
                   "eval.kl.limit=4"])
    suite = {k: v for k, v in dict(cfg.eval).items() if k != "benchmarks"}
    from omegaconf import OmegaConf

    suite = OmegaConf.to_container(OmegaConf.create(suite), resolve=True)
    args = (smoke_base, suite, eval_tasks(cfg), smoke_base, instantiate(cfg.data.task), {"dtype": "float32"}, 0)
    engines = []
    engine = lambda: engines.append(1) or make_generator("hf", smoke_base, {"batch_size": 256}, {"dtype": "float32"}, 0,  # noqa: E731
                                                         isolated=True)
    assert evaluate_model(*args, engine=engine) == evaluate_model(*args)
    assert engines == [1]


def test_vllm_dtype_names():
    from tms.generation.vllm import vllm_dtype

    assert [vllm_dtype(d) for d in ("bf16", "bfloat16", "fp16", "fp32", "auto", None)] == \
        ["bfloat16", "bfloat16", "float16", "float32", "auto", "auto"]
    with pytest.raises(ValueError, match="float64"):
        vllm_dtype("float64")


@pytest.mark.parametrize("overrides,message", [
    (["harvest.backend=vllm", "model.dtype=float64"], r"^harvest.backend.*: model.dtype=.float64. cannot run on vLLM"),
    (["harvest.backend=vllm", "harvest.temperature=2.5"], r"^harvest.temperature: 2.5 is above vLLM's limit of 2"),
    (["harvest.backend=vllm", "harvest.temperature=0", "harvest.samples_per_prompt=2"],
     r"^harvest.temperature: 0 \(greedy\) with harvest.samples_per_prompt=2"),
    (["eval.backend=vllm", "model.dtype=float64"], r"^eval.backend: model.dtype='float64' cannot run on vLLM"),
    (["eval.backend=vllm", "eval.sampling.temperature=3"], r"^eval.sampling.temperature: 3 is above vLLM's limit .* eval.backend=hf"),
    (["eval.backend=tpu"], r"^eval.backend: must be null"),
])
def test_vllm_incompatible_settings_are_refused_before_compute(overrides, message):
    from tms.config.validate import validate
    from tms.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        validate(compose(["experiment=smoke", *overrides]))
