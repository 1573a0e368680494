"""The rank-aware stage machinery (tms.core.distributed + tms.core.cache) with two real gloo processes, and the data split.

Fast: the processes only run stages with tiny bodies (no training). The full 2-process training runs are in
test_multiprocess_training.py (slow).
"""
import json
import os
import time

import pytest
import torch.multiprocessing as mp

from tms.core.cache import Stage


def _worker(rank: int, port: int, cache: str, out: str) -> None:
    """One rank of a 2-process job joined through session() (LOCAL_RANK set: started externally)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0",
                      WORLD_SIZE="2")
    from omegaconf import OmegaConf

    from tms.core import distributed

    calls: list[str] = []
    record: dict = {}
    trainer = OmegaConf.create({"accelerator": "cpu", "devices": 2, "num_nodes": 1})
    with distributed.session(trainer) as job:
        record["rank"], record["world"] = job.rank, job.world

        def fill_zero(d, info):  # rank 0 alone; the job's variables are hidden from it
            calls.append("zero")
            record["env_inside"] = os.environ.get("LOCAL_RANK")
            info["by"] = distributed.rank()

        Stage(cache, "zero", {"k": 1}).ensure(fill_zero, ranks="zero")

        def fill_all(d, info):  # every rank writes its part; rank 0's info is published
            calls.append("all")
            (d / f"part{distributed.rank()}").write_text("x")
            distributed.barrier()
            info["parts"] = sorted(p.name for p in d.iterdir() if p.name.startswith("part"))

        Stage(cache, "all", {"k": 1}).ensure(fill_all, ranks="all")
        Stage(cache, "all", {"k": 1}).ensure(lambda d, info: calls.append("again"))  # done: nobody fills

        def outer(d, info):  # a rank-0 stage whose body builds a nested stage as a single process
            Stage(cache, "inner", {"k": 1}).ensure(lambda d2, i2: calls.append("inner"), ranks="all")
            calls.append("outer")

        Stage(cache, "outer", {"k": 1}).ensure(outer, ranks="zero")
        # another job holds the lock and publishes the stage meanwhile: both ranks must reuse it, none build it
        open(os.path.join(out, f"waiting{rank}"), "w").close()
        Stage(cache, "contended", {"k": 1}).ensure(lambda d, info: calls.append("contended"))
        record["gathered"] = distributed.all_gather(distributed.rank() * 10)
    record["calls"], record["world_after"] = calls, distributed.world()
    record["env_after"] = os.environ.get("LOCAL_RANK")
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(record, fh)


def test_two_ranks_go_through_stages_together(tmp_path):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    contended = Stage(cache, "contended", {"k": 1})
    with contended.lock():  # "another sweep job" builds it while the ranks wait
        ctx = mp.start_processes(_worker, args=(find_free_network_port(), str(cache), str(out)), nprocs=2, join=False,
                                 start_method="spawn")
        deadline = time.time() + 120
        while not all((out / f"waiting{r}").exists() for r in (0, 1)) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # both ranks are now inside ensure(), blocked on the lock or on rank 0's answer
        with contended.build() as (d, info):
            info["by"] = "other job"
    while not ctx.join(timeout=120):
        pass
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["calls"] == ["zero", "all", "inner", "outer"] and r1["calls"] == ["all"]
    assert r0["env_inside"] is None  # rank_zero_section hides LOCAL_RANK & co. (a nested trainer sees one process)
    assert r0["gathered"] == r1["gathered"] == [0, 10]
    assert r0["world_after"] == 1 and r0["env_after"] == "0"  # session restored the process as it found it
    for name in ("zero", "all", "inner", "outer", "contended"):
        stage = Stage(cache, name, {"k": 1})
        assert stage.done and not stage.partial.exists(), name
    assert Stage(cache, "zero", {"k": 1}).manifest()["info"] == {"by": 0}
    assert Stage(cache, "all", {"k": 1}).manifest()["info"] == {"parts": ["part0", "part1"]}
    assert Stage(cache, "contended", {"k": 1}).manifest()["info"] == {"by": "other job"}


@pytest.mark.parametrize("n,world", [(96, 2), (97, 2), (10, 4)])
def test_epoch_split_uses_every_example_once(n, world):
    """Across ranks an epoch covers every example; only when n is not a multiple of the world size are the first
    world - n mod world examples of the permutation repeated (to give every rank the same number of steps)."""
    from tests.helpers import assert_epoch_split_covers_every_example_once

    assert_epoch_split_covers_every_example_once(n, world)


def test_multi_process_trainer_needs_a_session(tmp_path):
    from tests.conftest import compose
    from tms.pipeline import run

    cfg = compose(["experiment=smoke", "trainer=ddp_cpu", f"cache_dir={tmp_path}"])
    with pytest.raises(RuntimeError, match="2 processes"):
        run(cfg, tmp_path / "run", validated=True)


def test_child_command_keeps_config_args_only():
    from tms.core.distributed import config_args

    argv = ["-m", "hparams=alpha", "--config-name", "harvest", "-cd=/x", "trainer=ddp"]
    assert config_args(argv) == ["--config-name", "harvest", "-cd=/x"]
