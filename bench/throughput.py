"""Training and generation throughput of the code paths the pipeline uses, with a baseline in the same run.

    python bench/throughput.py --model tiny                 # the toy θ0 shape on CPU
    python bench/throughput.py --model qwen2.5-0.5b --device cuda --dtype bfloat16

The model is built from an architecture config with random weights (no download): ``tiny`` is the
toy world's Qwen2, ``qwen2.5-0.5b`` / ``qwen2.5-1.5b`` use the published Qwen2.5 shapes. Training
runs forward + masked NLL + backward + AdamW on random sequences; generation runs
:class:`tms.generation.hf.HFGenerator` with a fixed number of new tokens. The baseline is the same
measurement with ``attn_implementation=eager`` (and fp32 for training on CUDA), so the printed
ratio says what SDPA / bf16 buys on this machine.
"""
from __future__ import annotations

import argparse
import time

import torch

SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=384, max_position_embeddings=128, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True),
}


class _Tok:
    """The two tokenizer attributes the generator needs."""

    def __init__(self, vocab: int) -> None:
        self.eos_token_id, self.pad_token_id = vocab - 1, vocab - 2

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(map(str, ids))


def build(shape: str, attn: str, dtype: torch.dtype, device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPES[shape], attn_implementation=attn)).to(device=device, dtype=dtype)
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_tokens_per_s(model, batch: int, length: int, steps: int, device: str, autocast: bool) -> float:
    from tms.objectives.nll import masked_nll

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab - 2, (batch, length), device=device)
    labels = ids.clone()
    labels[:, : length // 4] = -100  # a prompt
    mask = torch.ones_like(ids)
    model.train()

    def step() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss, _ = masked_nll(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * length * steps / (time.perf_counter() - t0)


def generate_tokens_per_s(model, batch: int, prompt_len: int, new_tokens: int, device: str) -> float:
    from tms.generation.base import SamplingParams
    from tms.generation.hf import HFGenerator

    vocab = model.config.vocab_size
    gen = HFGenerator(model, _Tok(vocab), batch_size=batch)
    prompts = torch.randint(0, vocab - 2, (batch, prompt_len)).tolist()
    sp = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
    gen.generate(prompts[:2], 1, SamplingParams(temperature=1.0, max_new_tokens=4), seed=0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    out = gen.generate(prompts, 1, sp, seed=0)
    sync(device)
    return sum(c.num_tokens for c in out) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    weights = torch.float32  # mixed precision keeps fp32 master weights, as Lightning's bf16-mixed does
    autocast = a.dtype == "bfloat16"
    rows = []
    for attn in ("eager", "sdpa"):
        model = build(a.model, attn, weights, a.device)
        tr = train_tokens_per_s(model, a.batch, a.length, a.steps, a.device, autocast)
        gen_model = build(a.model, attn, torch.bfloat16 if autocast else torch.float32, a.device)
        ge = generate_tokens_per_s(gen_model, a.gen_batch, a.length // 2, a.new_tokens, a.device)
        rows.append((attn, tr, ge))
        del model, gen_model
    base = rows[0]
    print(f"model={a.model} device={a.device} dtype={a.dtype} train batch={a.batch}x{a.length} gen batch={a.gen_batch}")
    print(f"{'attention':10s} {'train tok/s':>12s} {'ratio':>6s} {'gen tok/s':>12s} {'ratio':>6s}")
    for attn, tr, ge in rows:
        print(f"{attn:10s} {tr:12.0f} {tr / base[1]:6.2f} {ge:12.0f} {ge / base[2]:6.2f}")


if __name__ == "__main__":
    main()
