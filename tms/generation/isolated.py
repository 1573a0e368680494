"""A generator that lives in its own process: what the vLLM backend runs in.

A vLLM engine holds most of a GPU's memory, a CUDA context and, with tensor parallelism, worker processes and a
process group of its own; tearing it down inside the process that built it is fragile and can take our own
``torch.distributed`` group with it. :class:`IsolatedGenerator` builds the backend in a child process (``spawn``,
without our job's ``MASTER_ADDR`` / ``RANK`` / ... variables) and forwards ``generate`` calls to it over a pipe;
``close()`` ends the process, which releases everything the engine held. One engine per harvested checkpoint and
per evaluated model, each in its own process. Any backend whose factory is importable can run this way (the HF
backend too, which is how it is tested without vLLM).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import traceback
from typing import Any, Callable, Iterator, Sequence

from tms.core.distributed import DIST_ENV
from tms.generation.base import Completion, SamplingParams

# the variables of a torch.distributed / Lightning job: a child engine must not join (or be mistaken for) a rank
JOB_ENV = DIST_ENV + ("TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED", "PL_TRAINER_GPUS")


@contextlib.contextmanager
def without_job_env() -> Iterator[None]:
    """Hide :data:`JOB_ENV` while the block starts a child process (restored after)."""
    saved = {k: os.environ.pop(k) for k in JOB_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _serve(conn, factory: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """The child: build the generator, then answer ``("generate", payload)`` until ``("close", None)``."""
    try:
        generator = factory(*args, **kwargs)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    try:
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            try:
                conn.send(("ok", generator.generate(*payload)))
            except BaseException:  # noqa: BLE001
                conn.send(("error", traceback.format_exc()))
    finally:
        generator.close()
        conn.send(("closed", None))


class IsolatedGenerator:
    """``factory(*args, **kwargs)`` built and run in a child process, behind the Generator interface.

    ``tokenizer``: the model's tokenizer for callers that format prompts (kept in the parent; the child only sees
    token ids). Errors in the child are raised here as ``RuntimeError`` with the child's traceback.
    """

    def __init__(self, factory: Callable[..., Any], *args: Any, tokenizer: Any = None, **kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        with without_job_env():
            self._proc = ctx.Process(target=_serve, args=(child, factory, args, kwargs), daemon=False)
            self._proc.start()
        child.close()
        self.tokenizer = tokenizer
        self._reply("building the generator")

    def _reply(self, what: str) -> Any:
        try:
            kind, value = self._conn.recv()
        except EOFError as err:
            raise RuntimeError(f"the generator process died while {what} (exit code {self._proc.exitcode})") from err
        if kind == "error":
            self.close()
            raise RuntimeError(f"the generator process failed while {what}:\n{value}")
        return value

    def generate(self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int) -> list[Completion]:
        if self._proc is None:
            raise RuntimeError("IsolatedGenerator.generate after close()")
        self._conn.send(("generate", ([[int(t) for t in p] for p in prompts], int(n), sampling, int(seed))))
        return self._reply("generating")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self, timeout: float = 120.0) -> None:
        """End the child (its engine, GPU memory and process group with it); idempotent."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        with contextlib.suppress(BrokenPipeError, EOFError, OSError):
            if proc.is_alive():
                self._conn.send(("close", None))
                if self._conn.poll(timeout):
                    self._conn.recv()
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        self._conn.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout=5.0)
