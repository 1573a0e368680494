"""The benchmark scripts run (tiny settings on CPU; their figures come from running them by hand, bench/README.md)."""
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run(*args, timeout=600):
    env = {"OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_device_check_runs_its_three_measurements(tmp_path):
    import json

    out = run("bench/gpu_check.py", "--tiny", "--json", str(tmp_path / "check.json"))
    assert "SFT trainer=cpu" in out and "HF harvest" in out and "GRPO step, logprob_chunk=512" in out
    data = json.loads((tmp_path / "check.json").read_text())
    assert data["sft"][0]["tokens_per_s"] > 0 and data["harvest"]["completions_per_s"] > 0
    assert [s["chunk"] for s in data["grpo"]] == [512, None] and all(s["seconds"] > 0 for s in data["grpo"])


def test_the_logprob_memory_bench_finds_the_same_loss_and_gradient():
    out = run("bench/logprob_memory.py", "--tokens", "256", "--length", "64", "--hidden", "32", "--vocab", "4096",
              "--chunks", "32", "--threads", "1")
    assert "chunk 32: same loss and gradient as the full logits: True" in out and "memory_ratio=" in out


def test_the_packing_bench_compares_padded_and_packed_steps():
    out = run("bench/packing.py", "--tiny")
    assert "speedup[toy]=" in out and "speedup[variable]=" in out and out.strip().splitlines()[-1].startswith("speedup=")


def test_the_sft_throughput_bench_runs_hf_trainer_and_our_stage1(tmp_path):
    out = run("bench/sft_throughput.py", "--tiny", "--arms", "hf,tms_padded,plain", "--precisions", "fp32",
              "--work", str(tmp_path))
    assert "speedup[tms_padded,fp32]=" in out and "ceiling=" in out
    assert out.strip().splitlines()[-1].startswith("speedup=")
    plain = next(line for line in out.splitlines() if line.startswith("plain "))
    assert " 4 steps " in plain  # the bare loop takes the tiny setting's steps (64 pairs / batch 16 x 1 epoch)


@pytest.mark.slow
def test_the_warm_compile_arm_runs_after_the_cold_one_that_fills_its_cache(tmp_path):
    out = run("bench/sft_throughput.py", "--tiny", "--arms", "plain,plain_compiled_warm", "--precisions", "fp32",
              "--work", str(tmp_path))
    arms = [line.split()[0] for line in out.splitlines() if line.startswith("plain")]
    assert arms == ["plain", "plain_compiled", "plain_compiled_warm"]  # the cold arm was put before the warm one
    assert "compiled_vs_plain=" in out and "compiled_warm_vs_plain=" in out
    cold, warm = (next(line for line in out.splitlines() if line.startswith(arm + " ")) for arm in arms[1:])
    assert " 0 hits, " in cold and " 0 misses" not in cold  # the cold arm compiled from an empty cache ...
    assert " 0 hits, " not in warm and " 0 misses" in warm  # ... and the warm one was served from what it left


def test_the_harvest_bench_compares_our_decoder_with_generate_and_the_per_prompt_loop(tmp_path):
    out = run("bench/harvest_throughput.py", "--tiny", "--arms", "loop,generate,ours", "--work", str(tmp_path))
    assert "speedup[loop,fp32]=" in out and "speedup[generate,fp32]=" in out
    assert out.strip().splitlines()[-1].startswith("speedup=")


@pytest.mark.slow
def test_the_harvest_bench_runs_transformers_continuous_batching(tmp_path):
    out = run("bench/harvest_throughput.py", "--tiny", "--arms", "ours,generate_batch", "--work", str(tmp_path))
    assert "speedup[generate_batch,fp32]=" in out


def test_the_bf16_bench_compares_fp32_and_bf16_training_and_generation():
    out = run("bench/bf16_cpu.py", "--tiny")
    for what in ("train,toy", "generate,toy", "train,smollm2", "generate,smollm2"):
        assert f"speedup[{what}]=" in out
    assert out.strip().splitlines()[-1].startswith("speedup=")
