"""Multi-process jobs: every rank runs the whole pipeline (SPMD), stages decide who does what.

A job with ``trainer.devices × trainer.num_nodes > 1`` processes is started once, at the top of
``python train.py`` / ``python harvest.py`` (:func:`session`), not lazily inside the first
``trainer.fit`` as Lightning's own launcher would do:

* started by hand on one node (``python train.py trainer=ddp``), this process becomes rank 0 and
  starts the other local ranks itself, as the same Hydra job (its own task overrides and output
  directory, never ``-m``: a multirun sweep would otherwise be re-run by every child);
* started by SLURM (``srun``, ``hydra/launcher=slurm``) or ``torchrun``, every process is already
  a rank: :func:`session` only joins them.

Then it initialises the default process group (gloo on CPU, NCCL on GPU: Lightning's strategies
reuse it) and a *control* group (gloo, :data:`WAIT_HOURS` timeout) over which the stage cache
(:class:`tms.core.cache.Stage`) keeps the ranks on one path through the pipeline:

* ``Stage.done`` is rank 0's answer, broadcast, so every rank takes the same branch;
* only rank 0 takes a stage's file lock, writes its manifest and renames ``<hash>.partial``;
* a training stage's body runs on every rank (they all take part in ``trainer.fit``); a rank-0 stage
  (θ0 build, evaluation, a vLLM harvest) runs on rank 0 inside :func:`rank_zero_section` while the
  others wait on the control group; the HF harvest is data-parallel (shard i on rank i mod world).

All ranks must read and write the same ``cache_dir`` and run directory: on several nodes that is a
shared filesystem (with working ``fcntl`` locks, e.g. NFSv4 or Lustre). A single process (world 1)
takes none of these paths: :func:`collective` is False and every helper is a no-op.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_HOURS = float(os.environ.get("TMS_DIST_WAIT_HOURS", "72"))  # how long ranks wait for rank 0's stages
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK",
            "LOCAL_WORLD_SIZE")


@dataclass
class Job:
    """This process's place in the current multi-process job (world 1: no job)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: Any = None                                  # the gloo group with the long timeout
    children: list[subprocess.Popen] = field(default_factory=list)
    sections: int = 0                                    # depth of rank_zero_section


_JOB = Job()


def world_size(trainer_cfg: DictConfig | dict) -> int:
    """Number of training processes the trainer config asks for (devices × nodes)."""
    devices = trainer_cfg.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        devices = torch.cuda.device_count() if trainer_cfg.get("accelerator") in ("gpu", "cuda") else 1
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    return max(1, int(devices)) * max(1, int(trainer_cfg.get("num_nodes", 1)))


def accumulation(train_cfg: DictConfig | dict, trainer_cfg: DictConfig | dict) -> int:
    """``accumulate_grad_batches`` if set, else ⌈effective_batch_size / (batch_size · world size)⌉."""
    acc = train_cfg.get("accumulate_grad_batches")
    if acc:
        return int(acc)
    eff = train_cfg.get("effective_batch_size")
    if not eff:
        return 1
    return max(1, math.ceil(int(eff) / (int(train_cfg["batch_size"]) * world_size(trainer_cfg))))


def rank() -> int:
    """Global rank of this process (0 outside a job)."""
    return _JOB.rank


def world() -> int:
    """Processes in the job (1 outside a job)."""
    return _JOB.world


def is_zero() -> bool:
    return _JOB.rank == 0


def collective() -> bool:
    """Whether the ranks must act together here: in a job, and not inside a rank-0 section."""
    return _JOB.world > 1 and _JOB.sections == 0


def barrier() -> None:
    """Wait for every rank (control group, long timeout); a no-op when not :func:`collective`."""
    if collective():
        dist.barrier(group=_JOB.control)


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not collective():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_JOB.control)
    return box[0]


def agree(fn: Callable[[], T]) -> T:
    """``fn()`` evaluated on rank 0 only and broadcast, so that every rank takes the same branch."""
    if not collective():
        return fn()
    return broadcast(fn() if is_zero() else None)


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` outside a job)."""
    if not collective():
        return [obj]
    out: list[Any] = [None] * _JOB.world
    dist.all_gather_object(out, obj, group=_JOB.control)
    return out


@contextlib.contextmanager
def rank_zero_section() -> Iterator[None]:
    """Run a block on rank 0 as if it were a single-process run.

    Inside it :func:`collective` is False (nested stages lock and publish as a single process), and
    the job's environment variables are hidden, so that a Lightning trainer or a vLLM engine started
    there sees one process. The other ranks must not enter it; they wait at the stage's barrier.
    """
    if _JOB.world == 1:
        yield
        return
    hidden = {k: os.environ.pop(k) for k in DIST_ENV if k in os.environ}
    _JOB.sections += 1
    try:
        yield
    finally:
        _JOB.sections -= 1
        os.environ.update(hidden)


def release_memory() -> None:
    """Give cached accelerator memory back before a long wait (rank 0 may need it, e.g. for vLLM)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def single_process(trainer_cfg):
    """``trainer_cfg`` for one process (1 device, 1 node, strategy auto) when it asks for several.

    Used for work that rank 0 does alone (the toy world's θ0 is always pretrained in one process).
    """
    from omegaconf import OmegaConf

    if world_size(trainer_cfg) == 1:
        return trainer_cfg
    cfg = OmegaConf.create(OmegaConf.to_container(trainer_cfg, resolve=True))
    cfg.devices, cfg.num_nodes, cfg.strategy = 1, 1, "auto"
    return cfg


def require_session(trainer_cfg) -> None:
    """Fail fast when a multi-process trainer config is run without :func:`session` (e.g. from a test or a
    notebook): Lightning would otherwise re-run ``sys.argv`` in child processes."""

    n = world_size(trainer_cfg)
    if n > 1 and _JOB.world != n:
        raise RuntimeError(
            f"trainer asks for {n} processes but this process is not part of a {n}-process job: run it through "
            "`python train.py ...` (which starts the ranks), `torchrun --nproc-per-node=N train.py ...` or srun, "
            "or use a single-device trainer (trainer=cpu / trainer=gpu)")


# -- starting and joining a job ----------------------------------------------------------------------------------
def cluster_environment():
    """The cluster environment Lightning would pick (TorchElastic, SLURM, LSF, MPI, else Lightning's own)."""
    from lightning.fabric.plugins.environments import (LightningEnvironment, LSFEnvironment, MPIEnvironment,
                                                       SLURMEnvironment, TorchElasticEnvironment)

    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if env_type.detect():
            return env_type()
    return LightningEnvironment()


def child_command(local_rank: int) -> tuple[list[str], str]:
    """The command line of local rank ``local_rank`` of this Hydra job, and its working directory.

    The job's own task overrides (in a multirun: the sweep's values for this job) and its ``hydra.job.*``
    overrides, in single-run mode, writing into this job's output directory, with its own log file and no
    second ``.hydra/``.
    """
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hc = HydraConfig.get()
    spec = getattr(__main__, "__spec__", None)
    cmd = [sys.executable, "-m", spec.name] if spec is not None else [sys.executable, to_absolute_path(sys.argv[0])]
    cmd += config_args(sys.argv[1:])
    out = str(hc.runtime.output_dir).replace("\\", "\\\\").replace("'", "\\'")
    cmd += list(hc.overrides.task)
    cmd += [o for o in hc.overrides.hydra if o.startswith("hydra.job.") and not o.startswith("hydra.job.name=")]
    cmd += [f"hydra.run.dir='{out}'", "hydra.output_subdir=null", f"hydra.job.name={hc.job.name}_rank{local_rank}"]
    return cmd, get_original_cwd()


def config_args(argv: list[str]) -> list[str]:
    """The ``--config-name/--config-path/--config-dir`` arguments (and short forms) of a Hydra command line."""
    names = ("--config-name", "--config-path", "--config-dir", "-cn", "-cp", "-cd")
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in names and i + 1 < len(argv):
            out += [a, argv[i + 1]]
            i += 2
            continue
        if any(a.startswith(n + "=") for n in names):
            out.append(a)
        i += 1
    return out


def _spawn_local_ranks(n_local: int, backend_env: dict[str, str]) -> list[subprocess.Popen]:
    """Start local ranks 1..n_local-1 of this Hydra job (rank 0 is this process)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise RuntimeError("a multi-process job can only be started from a Hydra entry point (train.py, harvest.py); "
                           "otherwise start the ranks with torchrun or srun")
    procs = []
    for local_rank in range(1, n_local):
        cmd, cwd = child_command(local_rank)
        env = {**os.environ, **backend_env, "LOCAL_RANK": str(local_rank)}
        procs.append(subprocess.Popen(cmd, env=env, cwd=cwd))
    from lightning.fabric.strategies.launchers.subprocess_script import _launch_process_observer

    _launch_process_observer(procs)  # kills every rank when one of them fails, instead of hanging in a collective
    return procs


def _ranks(env, n_local: int) -> tuple[int, int]:
    """``(global rank, local rank)`` of this process in an externally started job."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    local_rank = env.local_rank()
    if isinstance(env, LightningEnvironment):  # LOCAL_RANK / NODE_RANK set by a launcher (ours on another node)
        return env.node_rank() * n_local + local_rank, local_rank
    return env.global_rank(), local_rank


@contextlib.contextmanager
def session(trainer_cfg) -> Iterator[Job]:
    """Make this process one rank of the job the trainer config asks for, for the duration of the block.

    World 1 (or already in a job): does nothing. Otherwise starts or joins the ranks (see the module
    docstring), initialises the process groups, and at the end waits for the other ranks, tears the
    groups down, reaps the child processes and restores the environment (a multirun job may follow in
    this process).
    """
    global _JOB
    from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
    from lightning.fabric.utilities.distributed import _get_default_process_group_backend_for_device

    n = world_size(trainer_cfg)
    if n == 1 or _JOB.world > 1:
        yield _JOB
        return
    gpu = str(trainer_cfg.get("accelerator", "cpu")) in ("gpu", "cuda")
    num_nodes = max(1, int(trainer_cfg.get("num_nodes", 1)))
    n_local = n // num_nodes
    env = cluster_environment()
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    children: list[subprocess.Popen] = []
    ok = False
    try:
        if env.creates_processes_externally:
            global_rank, local_rank = _ranks(env, n_local)
        else:  # started by hand: this process is rank 0 of a one-node job and starts the others
            if num_nodes > 1:
                raise RuntimeError("trainer.num_nodes > 1: start the ranks with srun (hydra/launcher=slurm) or torchrun")
            job_env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(env.main_port), "NODE_RANK": "0",
                       "WORLD_SIZE": str(n)}
            if not gpu and "OMP_NUM_THREADS" not in os.environ:  # as Lightning's launcher: share the cores
                job_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_local))
            children = _spawn_local_ranks(n_local, job_env)
            os.environ.update({**job_env, "LOCAL_RANK": "0"})  # Lightning: the processes exist already
            global_rank = local_rank = 0
        os.environ.setdefault("MASTER_ADDR", env.main_address)
        os.environ.setdefault("MASTER_PORT", str(env.main_port))
        device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
        if gpu:
            torch.cuda.set_device(device)
        elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        dist.init_process_group(_get_default_process_group_backend_for_device(device), init_method="env://",
                                rank=global_rank, world_size=n, timeout=default_pg_timeout,
                                **({"device_id": device} if gpu else {}))
        control = dist.new_group(backend="gloo", timeout=timedelta(hours=WAIT_HOURS))
        _JOB = Job(rank=global_rank, world=n, local_rank=local_rank, control=control, children=children)
        log.info("rank %d of %d (local rank %d) joined the job", global_rank, n, local_rank)
        yield _JOB
        barrier()  # nobody tears the groups down while another rank still uses them
        ok = True
    except BaseException:
        for p in children:
            p.kill()
        raise
    finally:
        _end(children, saved, raise_on_failure=ok)


def _end(children: list[subprocess.Popen], saved: dict[str, str | None], raise_on_failure: bool) -> None:
    """Tear the job down: process groups, child processes, environment."""
    global _JOB
    if dist.is_initialized():
        dist.destroy_process_group()
    failed = [(p.pid, p.wait()) for p in children]
    _JOB = Job()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    failed = [(pid, rc) for pid, rc in failed if rc != 0]
    if failed and raise_on_failure:
        raise RuntimeError(f"local rank processes failed (pid, exit code): {failed}")
