"""Training and generation throughput of a causal LM on Countdown prompts (used for SmolLM2-135M on 2 CPU cores).

    python bench/smollm2_throughput.py MODEL_DIR [--threads 2] [--random-init] [--device cpu]

Training: AdamW steps on chat-formatted Countdown prompt + reference batches (the Stage 1 SFT computation),
non-padding tokens per second after one warm-up step. Generation: :class:`tms.generation.hf.HFGenerator` at
temperature 1 on ``batch`` prompts at once, generated tokens (eos included) per second. ``--random-init`` builds
the architecture from ``MODEL_DIR/config.json`` with random weights (same FLOPs; completions then run to
``--new-tokens`` since eos is almost never sampled), for machines the converted weights cannot be copied to.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from tms.data.formatting import collate_right_padded, completion_ids, prompt_ids
from tms.data.tasks.countdown import CountdownTask
from tms.generation.base import SamplingParams
from tms.generation.hf import HFGenerator
from tms.objectives.nll import masked_nll
from tms.models.loading import load_model, load_tokenizer


def load(path: str, random_init: bool, device: str):
    tok = load_tokenizer(path)
    if random_init:
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    else:
        model = load_model(path, dtype="float32")
    return model.to(device), tok


def train_rate(model, items, pad_id: int, batch: int, steps: int, device: str) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    tokens, started = 0, None
    for s in range(steps + 1):  # step 0 warms up
        if s == 1:
            tokens, started = 0, time.perf_counter()
        b = {k: v.to(device) for k, v in collate_right_padded(items[s * batch:(s + 1) * batch], pad_id).items()}
        loss, _ = masked_nll(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(b["attention_mask"].sum())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


def generation_rate(model, tok, prompts, batch: int, new_tokens: int) -> tuple[float, float]:
    gen = HFGenerator(model, tok, batch_size=batch)
    sp = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
    gen.generate(prompts[:1], 1, SamplingParams(temperature=1.0, max_new_tokens=4), seed=0)  # warm-up
    started = time.perf_counter()
    comps = gen.generate(prompts[:batch], 1, sp, seed=0)
    return sum(c.num_tokens for c in comps) / (time.perf_counter() - started), sum(c.num_tokens for c in comps) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-batches", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--gen-batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load(args.model, args.random_init, args.device)
    task = CountdownTask(seed=1234, n_train=max(64, max(args.gen_batches), max(args.train_batches) * (args.train_steps + 1)),
                         n_val=0, n_test=0)
    examples = task.examples("train")
    prompts = [prompt_ids(tok, task.messages(e)) for e in examples]
    items = [(p + completion_ids(tok, e.reference), len(p)) for p, e in zip(prompts, examples)]
    out = {"threads": torch.get_num_threads(), "device": args.device, "random_init": args.random_init,
           "mean_sequence_tokens": sum(len(i) for i, _ in items) / len(items), "train_tokens_per_s": {},
           "generation_tokens_per_s": {}, "mean_generated_tokens": {}}
    for b in args.train_batches:
        out["train_tokens_per_s"][b] = round(train_rate(model, items, tok.pad_token_id, b, args.train_steps, args.device), 1)
        print(json.dumps(out), flush=True)
    model.eval()
    for b in args.gen_batches:
        rate, mean_len = generation_rate(model, tok, prompts, b, args.new_tokens)
        out["generation_tokens_per_s"][b], out["mean_generated_tokens"][b] = round(rate, 1), round(mean_len, 1)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
