"""bf16 on a CPU with AMX-BF16: bf16-mixed training against fp32, and bf16 weights against fp32 for generation, at
the toy's and SmolLM2-135M's shapes.

    python bench/bf16_cpu.py                      # toy and smollm2 shapes (~3 min on 2 cores)
    python bench/bf16_cpu.py --shapes smollm2     # one shape
    python bench/bf16_cpu.py --tiny               # seconds (the test suite runs it)

Models are built from the architectures with random weights (cost does not depend on the weights; the shapes are
``bench/packing.py``'s ``SHAPES``: the toy θ0's hidden 128 x 4 layers, SmolLM2-135M's hidden 576 x 30 layers, tied
embeddings, vocabulary 49,152). Data are random token ids with the lengths of the shape's task (toy pairs; Countdown
for SmolLM2, ``bench/packing.py``'s ``lengths``).

* ``train``: one Stage 1 step — the forward of the token NLL (:func:`tms.objectives.head_logprobs.model_token_logprobs`,
  through the chunked head at SmolLM2's ``logprob_chunk`` of 512 as conf/model/smollm2-135m.yaml trains it), backward,
  gradient clipping and fused AdamW — in fp32 against bf16-mixed (the forward under ``torch.autocast(bfloat16)``
  with fp32 weights, gradients and optimiser state: what Lightning's ``precision=bf16-mixed`` does), on the same
  micro-batches, alternating the two so both see the same machine state. The losses of the first step are printed
  (same weights, same batch: they differ by bf16 rounding only).
* ``generate``: sampling ``--new-tokens`` tokens after each of ``--prompts`` prompts in one batch with the harvest's
  decoder (:func:`tms.generation.decode.sample_dropping_finished`, temperature 1) from fp32 weights against a bf16
  copy of the same weights.

Prints seconds per arm, ``speedup[train,<shape>]=<fp32 / bf16>`` and ``speedup[generate,<shape>]=``, then last
``speedup=`` for SmolLM2 training (the first shape's when SmolLM2 is not run). The CPU's AMX / AVX-512-BF16 support
is printed first: without it bf16 runs emulated and is expected to lose.
"""
from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from packing import SHAPES, batches, lengths  # noqa: E402

from tms.data.formatting import collate_right_padded  # noqa: E402
from tms.generation.decode import sample_dropping_finished  # noqa: E402
from tms.objectives.head_logprobs import model_token_logprobs  # noqa: E402
from tms.training.optim import build_optimizer  # noqa: E402

DATA = {"toy": "toy", "smollm2": "countdown"}  # the lengths each shape trains and generates on
CHUNK = {"toy": None, "smollm2": 512}          # model.logprob_chunk of the shape's model config
BATCH = {"toy": 16, "smollm2": 4}              # model.batch_size of the shape's model config


def cpu_bf16_support() -> str:
    """What this CPU offers bf16 matmuls (torch's own detection)."""
    try:
        return f"AMX tiles {torch.cpu._is_amx_tile_supported()}, AVX-512-BF16 {torch.cpu._is_avx512_bf16_supported()}"
    except AttributeError:  # an older torch without the probes
        return "unknown (this torch does not say)"


def build(shape: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True, attn_implementation="sdpa"))


def train_step(model, opt, items, bf16: bool, chunk: int | None) -> tuple[float, float]:
    """One step (see ``train`` in the module docstring); returns (seconds, loss)."""
    t0 = time.perf_counter()
    b = collate_right_padded(items, pad_id=0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logp, mask, _ = model_token_logprobs(model, b["input_ids"], b["attention_mask"], b["labels"], chunk=chunk)
    loss = -logp.float().sum() / mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, float(loss.detach())


def train(shape_name: str, shape: dict, steps: int) -> dict[str, float]:
    """Seconds a step in fp32 and bf16-mixed (same starting weights, same micro-batches, alternating)."""
    bs = batches(DATA[shape_name], BATCH[shape_name], steps + 1, shape["vocab_size"])
    models = {False: build(shape)}
    models[True] = copy.deepcopy(models[False])
    adamw = functools.partial(torch.optim.AdamW, lr=1e-5)  # fused, as Stage 1 builds it
    opts = {k: build_optimizer(adamw, list(m.parameters())) for k, m in models.items()}
    seconds, first = {False: 0.0, True: 0.0}, {}
    for i, items in enumerate(bs):
        for bf16 in (False, True):
            s, loss = train_step(models[bf16], opts[bf16], items, bf16, CHUNK[shape_name])
            seconds[bf16] += s if i else 0.0  # the first batch warms both arms up
            first.setdefault(bf16, loss)
    return {"fp32": seconds[False] / steps, "bf16": seconds[True] / steps, "loss_fp32": first[False],
            "loss_bf16": first[True]}


def generate(shape_name: str, shape: dict, prompts: int, new_tokens: int) -> dict[str, float]:
    """Seconds to sample ``new_tokens`` after ``prompts`` prompts, fp32 weights against bf16 weights."""
    g = torch.Generator().manual_seed(1)
    lens = [p for p, _ in lengths(DATA[shape_name], prompts, g)]
    width = max(lens)
    ids = torch.zeros(prompts, width, dtype=torch.long)
    mask = torch.zeros(prompts, width, dtype=torch.long)
    for r, n in enumerate(lens):  # left-padded, as the harvest batches prompts
        ids[r, width - n:] = torch.randint(3, shape["vocab_size"], (n,), generator=g)
        mask[r, width - n:] = 1
    fp32 = build(shape).eval()
    out = {}
    for name, model in (("fp32", fp32), ("bf16", copy.deepcopy(fp32).to(torch.bfloat16))):
        with torch.inference_mode():
            sample_dropping_finished(model, ids[:2, -8:], mask[:2, -8:], [2], 2, 1.0, 1.0)  # warm-up
            torch.manual_seed(0)
            t0 = time.perf_counter()
            rows = sample_dropping_finished(model, ids, mask, [2], new_tokens, 1.0, 1.0)
            out[name] = time.perf_counter() - t0
        out[f"tokens_{name}"] = sum(len(r) for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="toy,smollm2")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per arm (default toy 20, smollm2 4)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shapes = a.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape {unknown[0]!r} (shapes: {', '.join(SHAPES)})")
    print(f"{a.threads} threads, torch {torch.__version__}; CPU bf16 support: {cpu_bf16_support()}")
    ratios = {}
    for name in shapes:
        shape = dict(SHAPES[name])
        steps = a.steps or {"toy": 20, "smollm2": 4}[name]
        prompts, new_tokens = a.prompts, a.new_tokens
        if a.tiny:
            shape.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=1024)
            steps, prompts, new_tokens = 2, 4, 4
        t = train(name, shape, steps)
        ratios[("train", name)] = t["fp32"] / t["bf16"]
        print(f"train[{name}]     fp32 {t['fp32']:7.3f} s/step  bf16-mixed {t['bf16']:7.3f} s/step  first loss "
              f"{t['loss_fp32']:.4f} / {t['loss_bf16']:.4f}  speedup[train,{name}]={ratios[('train', name)]:.3f}",
              flush=True)
        g = generate(name, shape, prompts, new_tokens)
        ratios[("generate", name)] = g["fp32"] / g["bf16"]
        print(f"generate[{name}]  fp32 {g['fp32']:7.3f} s ({g['tokens_fp32']} tokens)  bf16 {g['bf16']:7.3f} s "
              f"({g['tokens_bf16']} tokens)  speedup[generate,{name}]={ratios[('generate', name)]:.3f}", flush=True)
    last = ("train", "smollm2") if ("train", "smollm2") in ratios else ("train", shapes[0])
    print(f"speedup={ratios[last]:.3f}   (bf16-mixed / fp32 training, {last[1]} shape)")


if __name__ == "__main__":
    main()
