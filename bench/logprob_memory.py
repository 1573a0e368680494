"""Peak memory of one loss step (forward + backward of the token NLL) with a 152K-vocabulary head: the full
[B, L, V] float32 logits (today's default for the toy) against the memory-bounded LM-head path
(tms/objectives/head_logprobs.py, model.logprob_chunk), on the same model and batch; also checks that the two
give the same loss and gradients.

    python bench/logprob_memory.py [--tokens 2048] [--hidden 256] [--vocab 151936] [--chunks 1024 256]

Each variant runs in its own process (CPU: peak resident memory from getrusage, minus the process's memory before
the step; CUDA: torch.cuda.max_memory_allocated). Prints one row per variant and `memory_ratio=<full / chunked>`
for the first chunk size. Run by hand; not a test.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tms, not an installed one


def one(args: argparse.Namespace, chunk: int | None) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tms.objectives.head_logprobs import model_token_logprobs

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=args.length, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).to(device)
    B = args.tokens // args.length
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (B, args.length), generator=g).to(device)
    attn = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : args.length // 4] = -100  # a prompt quarter, as in SFT
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    logp, mask, _ = model_token_logprobs(model, ids, attn, labels, chunk=chunk)
    loss = -logp.sum() / mask.sum()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    seconds = time.perf_counter() - t0
    grad = model.lm_head.weight.grad
    return {"chunk": chunk, "device": device, "peak_mib": peak / 2**20, "seconds": seconds, "loss": float(loss),
            "grad_norm": float(grad.norm()), "grad_probe": float(grad[:64, :8].double().sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of the micro-batch (B x L)")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=151936, help="Qwen2.5's vocabulary")
    ap.add_argument("--chunks", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(one(args, None if args.worker == "full" else int(args.worker))))
        return
    rows = []
    for variant in ["full", *map(str, args.chunks)]:
        cmd = [sys.executable, __file__, "--worker", variant, "--tokens", str(args.tokens), "--length", str(args.length),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    full = rows[0]
    print(f"one loss step: {args.tokens} tokens, vocabulary {args.vocab}, hidden {args.hidden}, {full['device']}")
    print(f"{'variant':>14} {'peak MiB':>10} {'seconds':>8} {'loss':>12} {'|grad lm_head|':>15}")
    for r in rows:
        name = "full logits" if r["chunk"] is None else f"chunk {r['chunk']}"
        print(f"{name:>14} {r['peak_mib']:>10.0f} {r['seconds']:>8.2f} {r['loss']:>12.6f} {r['grad_norm']:>15.6f}")
    for r in rows[1:]:
        same = abs(r["loss"] - full["loss"]) <= 1e-5 * abs(full["loss"]) and \
            abs(r["grad_probe"] - full["grad_probe"]) <= 1e-4 * max(1.0, abs(full["grad_probe"]))
        print(f"chunk {r['chunk']}: same loss and gradient as the full logits: {same}")
    print(f"memory_ratio={full['peak_mib'] / max(rows[1]['peak_mib'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
