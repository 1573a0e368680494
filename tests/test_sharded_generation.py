"""Generation with a sharded model cannot hang: two gloo ranks of an FSDP2-sharded model whose completions end at
different lengths (rank 0 stops after 2 new tokens, rank 1 runs to 12) both return, and GRPO's rollouts under
trainer=fsdp2_cpu (2 processes) finish. Without synchronised generation rank 1's extra forwards all-gather shards
that rank 0 never sends, and the job waits forever: here the timeout turns that into a failure."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch.multiprocessing as mp

from tests.conftest import REPO

MAX_NEW = (2, 12)


def _generate_worker(rank: int, port: int, base: str, out: str, synced: bool | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from tms.generation.base import SamplingParams
    from tms.generation.hf import HFGenerator
    from tms.models.loading import load_model, load_tokenizer
    from tms.models.sharding import needs_synced_generation

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, tok = load_model(base, dtype="float32"), load_tokenizer(base)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    gen = HFGenerator(model, tok, batch_size=4)
    if synced is not None:  # the control: force the flag
        import tms.generation.hf as hf
        hf.needs_synced_generation = lambda m: synced
    prompts = [tok(f"sum {a} {a + 1} {a + 2}")["input_ids"] for a in range(4)]
    comps = gen.generate(prompts, 1, SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW[rank]), seed=rank)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"lengths": [c.num_tokens for c in comps], "synced": needs_synced_generation(model)}, fh)
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(tmp_path, base, synced=None, timeout=120):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    ctx = mp.start_processes(_generate_worker, args=(find_free_network_port(), base, str(tmp_path), synced), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ctx.join(timeout=1):
            return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for p in ctx.processes:
        p.kill()
    return None


def test_sharded_ranks_whose_completions_end_at_different_lengths_both_finish(smoke_base, tmp_path):
    ranks = run_ranks(tmp_path, smoke_base)
    assert ranks is not None, "sharded generation hung"
    r0, r1 = ranks
    assert r0["synced"] and r1["synced"]
    assert max(r0["lengths"]) <= MAX_NEW[0] < max(r1["lengths"])


@pytest.mark.slow
def test_without_synchronised_generation_the_same_job_hangs(smoke_base, tmp_path):
    """The control: the test above can fail (the flag is what makes it pass). Slow: it waits out a timeout."""
    assert run_ranks(tmp_path, smoke_base, synced=False, timeout=30) is None


def test_grpo_rollouts_under_fsdp2_on_two_processes_finish(smoke_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "train.py", "experiment=smoke", "method=grpo", "trainer=fsdp2_cpu",
                           f"cache_dir={smoke_cache}", "rl.max_steps=3", "rl.num_generations=4", "rl.prompts_per_step=8",
                           "rl.temperature=1.2", f"hydra.run.dir={tmp_path}/run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = (tmp_path / "run").joinpath(json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"]["rl"])
    assert len(json.loads((stage / "rewards.json").read_text())["per_rollout"]) == 3
