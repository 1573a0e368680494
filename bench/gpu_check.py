"""The paper-scale device check (bench/gpu_check.sh): one command on one H100/H200, nothing downloaded.

    bash bench/gpu_check.sh                 # ~5-8 min on one H100/H200
    python bench/gpu_check.py --tiny        # the same code on CPU with a tiny model in seconds (the test suite runs it)

Models are built from the published Qwen2.5-0.5B (and, for the GRPO step, 1.5B) architecture configs with random
weights (bench/throughput.py SHAPES); token ids stand in for text, so no tokenizer is downloaded. Measured:

1. **SFT steps** (bf16) with the pipeline's trainer code (bench/fsdp_gpu.py): ``trainer=gpu`` and ``trainer=fsdp``
   in one process; steady-state tokens/s and MFU = tokens/s × (6·N + 12·layers·hidden·length) / peak bf16 FLOP/s.
2. **HF harvest**: completions/s of :class:`tms.generation.hf.HFGenerator` (the always-available backend), bf16.
3. **One GRPO optimisation step** on a synthetic rollout (P·G sequences, random advantages, PPO-clip loss of
   :func:`tms.objectives.policy_gradient.grpo_loss`, micro-batched as RL does) with the memory-bounded log-probs
   (``model.logprob_chunk``) against the full logits: peak GPU memory and seconds.

Prints one table. Record its output in bench/README.md with the machine and the date.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.fsdp_gpu import run_trainers  # noqa: E402
from bench.throughput import SHAPES, _Tok, build  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def n_params(shape: str) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPES[shape]))
    return sum(p.numel() for p in model.parameters())


def mfu(shape: str, tokens_per_s: float, length: int) -> float | None:
    peak = peak_flops()
    if peak is None:
        return None
    s = SHAPES[shape]
    per_token = 6 * n_params(shape) + 12 * s["num_hidden_layers"] * s["hidden_size"] * length
    return tokens_per_s * per_token / peak


def harvest(shape: str, device: str, dtype: torch.dtype, prompts: int, prompt_len: int, new_tokens: int,
            batch: int) -> dict:
    from tms.generation.base import SamplingParams
    from tms.generation.hf import HFGenerator

    model = build(shape, "sdpa", dtype, device)
    vocab = model.config.vocab_size
    gen = HFGenerator(model, _Tok(vocab), batch_size=batch)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab - 2, (prompts, prompt_len), generator=g).tolist()
    gen.generate(ids[:2], 1, SamplingParams(temperature=1.0, max_new_tokens=4), seed=0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    out = gen.generate(ids, 1, SamplingParams(temperature=1.0, max_new_tokens=new_tokens), seed=0)
    sync(device)
    seconds = time.perf_counter() - t0
    del gen, model
    return {"completions_per_s": len(out) / seconds, "tokens_per_s": sum(c.num_tokens for c in out) / seconds,
            "seconds": seconds}


def grpo_step(shape: str, device: str, chunk: int | None, sequences: int, prompt_len: int, completion_len: int,
              micro_batch: int) -> dict:
    """One optimiser step of the GRPO loss on a synthetic rollout; peak memory of the step (CUDA) and its seconds."""
    from tms.objectives.head_logprobs import model_token_logprobs
    from tms.objectives.policy_gradient import grpo_loss

    model = build(shape, "sdpa", torch.float32, device)  # fp32 master weights, bf16 autocast (as bf16-mixed)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    length = prompt_len + completion_len
    ids = torch.randint(0, vocab - 2, (sequences, length), generator=g).to(device)
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    attn = torch.ones_like(ids)
    adv = torch.randn(sequences, generator=g).to(device)
    cuda = device.startswith("cuda")
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=cuda)
    with torch.no_grad(), autocast:  # the sampling policy's log-probs (π_old = π_θ at μ = 1)
        old = [model_token_logprobs(model, ids[i:i + micro_batch], attn[i:i + micro_batch],
                                    labels[i:i + micro_batch], chunk=chunk)[0] for i in range(0, sequences, micro_batch)]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n_tok = (labels[:, 1:] != -100).sum()
    for k, i in enumerate(range(0, sequences, micro_batch)):
        sl = slice(i, i + micro_batch)
        with autocast:
            logp, mask, _ = model_token_logprobs(model, ids[sl], attn[sl], labels[sl], chunk=chunk, entropy=True)
        loss, _ = grpo_loss(logp, old[k], None, adv[sl], mask, 0.2, None, 0.0, "token_mean")
        (loss * mask.sum() / n_tok).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return {"chunk": chunk, "peak_gib": peak, "seconds": seconds}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny model and sizes: checks that the script runs")
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not a.tiny:
        sys.exit("bench/gpu_check.py needs a CUDA GPU (--tiny runs the same code on CPU with a tiny model)")
    device = "cuda" if cuda and not a.tiny else "cpu"
    if a.tiny:
        sft = dict(shape="tiny", trainers=["cpu"], steps=5, batch=2, length=32)
        hv = dict(shape="tiny", prompts=16, prompt_len=16, new_tokens=8, batch=16)
        rl = dict(shape="tiny", sequences=8, prompt_len=16, completion_len=16, micro_batch=4)
    else:
        sft = dict(shape="qwen2.5-0.5b", trainers=["gpu", "fsdp"], steps=20, batch=8, length=1024)
        hv = dict(shape="qwen2.5-0.5b", prompts=1024, prompt_len=256, new_tokens=256, batch=256)
        rl = dict(shape="qwen2.5-1.5b", sequences=64, prompt_len=256, completion_len=768, micro_batch=16)
    machine = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    t_all = time.perf_counter()
    rows = run_trainers(sft["shape"], sft["trainers"], 1, sft["steps"], sft["batch"], sft["length"],
                        allow_cpu=a.tiny)
    for r in rows:
        r["mfu"] = mfu(sft["shape"], r["tokens_per_s"], sft["length"])
    h = harvest(hv["shape"], device, torch.bfloat16 if device == "cuda" else torch.float32, hv["prompts"],
                hv["prompt_len"], hv["new_tokens"], hv["batch"])
    steps = [grpo_step(rl["shape"], device, chunk, rl["sequences"], rl["prompt_len"], rl["completion_len"],
                       rl["micro_batch"]) for chunk in (512, None)]
    print(f"\ntms device check on {machine} ({time.perf_counter() - t_all:.0f} s), torch {torch.__version__}")
    print(f"{'measurement':44} {'value':>14}   detail")
    for r in rows:
        m = f"{100 * r['mfu']:.1f}% MFU" if r.get("mfu") is not None else "MFU n/a"
        print(f"{'SFT trainer=' + r['trainer'] + ' (' + sft['shape'] + ', bf16)':44} {r['tokens_per_s']:>10d} tok/s   "
              f"{m}, peak {r['peak_gib']} GiB, batch {sft['batch']}x{sft['length']}")
    print(f"{'HF harvest (' + hv['shape'] + ')':44} {h['completions_per_s']:>8.1f} compl/s   "
          f"{h['tokens_per_s']:.0f} new tok/s, {hv['prompts']} prompts x {hv['new_tokens']} new tokens")
    for s in steps:
        name = f"GRPO step, logprob_chunk={s['chunk']}" if s["chunk"] else "GRPO step, full logits"
        print(f"{name + ' (' + rl['shape'] + ')':44} {s['peak_gib']:>10.2f} GiB     {s['seconds']:.2f} s, "
              f"{rl['sequences']} x {rl['prompt_len'] + rl['completion_len']} tokens, micro-batch {rl['micro_batch']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine, "sft": rows, "harvest": h, "grpo": steps}, indent=1))


if __name__ == "__main__":
    main()
