"""Padding-free packed SFT batches (``sft.packing``) against right-padded ones: one training step (forward of the
token NLL, backward) of the same micro-batches, alternating packed and padded so both see the same machine state.

    python bench/packing.py                                  # toy shape: toy-length and variable-length data
    python bench/packing.py --shape smollm2 --steps 3        # SmolLM2-135M's architecture (random init), ~5 min
    python bench/packing.py --tiny                           # seconds (the test suite runs it)
    python bench/packing.py --bf16                           # under bf16 autocast (AMX on this CPU)

Data (random token ids, so only the lengths matter — SFT cost does not depend on the tokens):

* ``toy``: the lengths of the toy world's pairs (prompt + reference, 41 ± 1 tokens: ≈ 2% padding at batch 16);
* ``countdown``: Countdown prompt + reference lengths at ≈ 4 characters a BPE token plus a 20-token chat
  template (near uniform as well);
* ``variable``: GSM8K-like lengths, prompts 40-120 and solutions 50-350 tokens (uniform), ≈ 32% padding at batch 8.

Shapes: ``toy`` (the toy θ0's Qwen2: hidden 128, 4 layers, vocabulary 384) and ``smollm2`` (SmolLM2-135M: Llama,
hidden 576, 30 layers, 9/3 heads, vocabulary 49,152). Prints seconds a step per arm and ``speedup[data]=<padded
seconds / packed seconds>``, then ``speedup=`` on the variable-length data.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tms.data.formatting import collate_right_padded  # noqa: E402
from tms.data.packing import collate_packed  # noqa: E402
from tms.models.varlen import packed_attention, packed_kwargs  # noqa: E402
from tms.objectives.head_logprobs import model_token_logprobs  # noqa: E402

SHAPES = {
    "toy": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=384, max_position_embeddings=512),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048),
}


def lengths(data: str, n: int, g: torch.Generator) -> list[tuple[int, int]]:
    """``n`` (prompt tokens, completion tokens) pairs of the named length distribution (see the module docstring)."""
    if data == "toy":
        return [(int(torch.randint(27, 30, (1,), generator=g)), 13) for _ in range(n)]
    if data == "countdown":
        from tms.data.tasks.countdown import CountdownTask

        return [(20 + len(e.prompt) // 4, 1 + len(e.reference) // 4) for e in CountdownTask().examples("train", n)]
    return [(int(torch.randint(40, 121, (1,), generator=g)), int(torch.randint(50, 351, (1,), generator=g)))
            for _ in range(n)]


def batches(data: str, batch: int, steps: int, vocab: int, seed: int = 0) -> list[list[tuple[list[int], int]]]:
    g = torch.Generator().manual_seed(seed)
    items = [(torch.randint(3, vocab, (p + c,), generator=g).tolist(), p) for p, c in lengths(data, batch * steps, g)]
    return [items[i:i + batch] for i in range(0, len(items), batch)]


def padding(bs) -> float:
    real = sum(len(x) for b in bs for x, _ in b)
    return 1 - real / sum(len(b) * max(len(x) for x, _ in b) for b in bs)


def step(model, items, packed: bool, bf16: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if packed:
            b = collate_packed(items)
            kw = {"position_ids": b["position_ids"], **packed_kwargs(b["cu_seq_lens"], b["max_length"])}
            with packed_attention(model):
                logp, mask, _ = model_token_logprobs(model, b["input_ids"], None, b["labels"], forward_kwargs=kw)
        else:
            b = collate_right_padded(items, pad_id=0)
            logp, mask, _ = model_token_logprobs(model, b["input_ids"], b["attention_mask"], b["labels"])
    (-logp.sum() / mask.sum()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    ap.add_argument("--data", default="toy,countdown,variable")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per arm and data (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shape = dict(SHAPES[a.shape])
    if a.tiny:
        shape.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1)
        a.steps = 2
    model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True, attn_implementation="sdpa"))
    print(f"shape {a.shape}{' (tiny)' if a.tiny else ''}, {a.threads} threads, {'bf16 autocast' if a.bf16 else 'fp32'}, "
          f"torch {torch.__version__}")
    ratios = {}
    for data in a.data.split(","):
        bs = batches(data, 8 if data == "variable" else 16, a.steps + 1, shape["vocab_size"])
        seconds = {False: 0.0, True: 0.0}
        for i, items in enumerate(bs):
            for packed in (False, True):
                s = step(model, items, packed, a.bf16)
                seconds[packed] += s if i else 0.0  # the first batch warms both arms up
        ratios[data] = seconds[False] / seconds[True]
        print(f"{data:10s} padding {padding(bs[1:]):5.1%}  padded {seconds[False] / a.steps:7.3f} s/step  "
              f"packed {seconds[True] / a.steps:7.3f} s/step  speedup[{data}]={ratios[data]:.3f}", flush=True)
    if "variable" in ratios:
        print(f"speedup={ratios['variable']:.3f}")


if __name__ == "__main__":
    main()
