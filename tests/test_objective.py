"""The objective of an optimiser step does not depend on how the step is split into micro-batches and ranks.

Reference: the token mean of the NLL over every completion token of the step (eq. 3.1), computed in one piece.
SFT and RL (GRPO, ``token_mean``) are checked end to end through Lightning in float64 with plain SGD on ragged
completions (tests/objective_runs.py): batch 8 × accumulate 1, batch 2 × accumulate 4 and 2 DDP ranks all end
at the same weights (1e-10), while the old per-micro-batch token mean does not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.objective_runs import run
from tms.objectives.nll import IGNORE_INDEX, masked_nll, masked_nll_sum, step_token_mean
from tms.data.windows import with_window_tokens

TOL = 1e-10


def ragged_batch(B=8, L=12, V=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, L), generator=g)
    for b in range(B):  # prompt of 2 tokens, then a completion of 1 .. L-3 tokens, then padding
        n = 3 + (b * 5) % (L - 3)
        labels[b, :2] = IGNORE_INDEX
        labels[b, n:] = IGNORE_INDEX
    return logits, labels


def test_step_token_mean_gradient_equals_the_whole_step_token_mean():
    """Σ over micro-batches and ranks of step_token_mean / A (Lightning), averaged over W (DDP) = ∇ token mean."""
    logits, labels = ragged_batch()
    full = logits.clone().requires_grad_(True)
    masked_nll(full, labels)[0].backward()
    for world, acc in ((1, 1), (1, 4), (2, 2), (4, 2), (2, 4)):
        x = logits.clone().requires_grad_(True)
        rows = torch.arange(8).view(acc, world, -1)  # micro-batch m of rank r holds rows[m, r]
        n_step = int((labels[:, 1:] != IGNORE_INDEX).sum())
        for r in range(world):
            for m in range(acc):
                s, _ = masked_nll_sum(x[rows[m, r]], labels[rows[m, r]])
                (step_token_mean(s, n_step, acc, world) / acc / world).backward()  # /A Lightning, /W DDP mean
        assert torch.allclose(x.grad, full.grad, atol=1e-15, rtol=0), (world, acc)
    # the objective before the fix: the mean of per-micro-batch token means — measurably different here
    x = logits.clone().requires_grad_(True)
    for chunk in torch.arange(8).view(4, 2):
        (masked_nll(x[chunk], labels[chunk])[0] / 4).backward()
    assert (x.grad - full.grad).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no completion token"):
        step_token_mean(torch.tensor(0.0), 0, 1, 1)


def test_windows_carry_the_token_count_of_their_optimiser_step():
    labels = [torch.tensor([[IGNORE_INDEX] + [1] * k + [IGNORE_INDEX] * (5 - k)]) for k in (1, 2, 3, 4, 5, 1, 2)]
    batches = [{"labels": lab} for lab in labels]
    out = list(with_window_tokens(batches, accumulate=3))
    assert [int(b["window_tokens"]) for b in out] == [6, 6, 6, 10, 10, 10, 2]  # windows (1,2,3) (4,5,1) (2)
    assert [b["window_last"] for b in out] == [False, False, True, False, False, True, True]
    resumed = list(with_window_tokens(batches[3:], accumulate=3, start=3))  # a resumed epoch keeps its windows
    assert [int(b["window_tokens"]) for b in resumed] == [10, 10, 10, 2]
    misaligned = list(with_window_tokens(batches[4:], accumulate=3, start=4))  # start in mid-window
    assert [int(b["window_tokens"]) for b in misaligned] == [6, 6, 2]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def moved(a: dict, base_state: dict) -> float:
    return max_diff(a, base_state)


def torchrun(base: str, out, **args) -> dict:
    import socket

    with socket.socket() as sock:  # a free port (torchrun's --master-port=0 hangs in the workers' rendezvous)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={port}",
           str(REPO / "tests" / "objective_runs.py"), json.dumps({"base": base, "out": str(out), **args})]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def base_state(smoke_base):
    from tms.models.loading import load_model

    return {k: v.double() for k, v in load_model(smoke_base, dtype="float64").state_dict().items()}


def test_sft_update_is_the_same_for_every_micro_batch_and_rank_layout(smoke_base, base_state, tmp_path):
    one = run(smoke_base, "sft", batch=8, acc=1, steps=2)
    assert moved(one, base_state) > 1e-3  # the steps did change the weights
    assert max_diff(run(smoke_base, "sft", batch=2, acc=4, steps=2), one) < TOL
    assert max_diff(run(smoke_base, "sft", batch=1, acc=8, steps=2), one) < TOL
    # two DDP ranks: 2 × 4 and 2 × 2 × accumulate 2 (the same 8 examples per step: the permutation is strided)
    assert max_diff(torchrun(smoke_base, tmp_path / "ddp.pt", mode="sft", batch=4, acc=1, steps=2), one) < TOL
    assert max_diff(torchrun(smoke_base, tmp_path / "ddp_acc.pt", mode="sft", batch=2, acc=2, steps=2), one) < TOL
    # the objective before the fix (each micro-batch's own token mean) moves with the layout
    old = max_diff(run(smoke_base, "sft", batch=2, acc=4, steps=2, old_objective=True),
                   run(smoke_base, "sft", batch=8, acc=1, steps=2, old_objective=True))
    assert old > 1e-6


def test_rl_update_is_the_same_for_every_micro_batch_and_rank_layout(smoke_base, base_state, tmp_path):
    one = run(smoke_base, "rl", batch=8, acc=32, steps=1)  # 8 prompts × G=4 in one forward/backward
    assert moved(one, base_state) > 1e-4
    assert max_diff(run(smoke_base, "rl", batch=8, acc=3, steps=1), one) < TOL
    assert max_diff(torchrun(smoke_base, tmp_path / "rl_ddp.pt", mode="rl", batch=4, acc=5, steps=1), one) < TOL
