"""The harvest's HF backend against what a user would otherwise write: completions/s of the same sampling policy.

    python bench/harvest_throughput.py                    # the toy θ0 over the 2000 toy_sum train prompts
    python bench/harvest_throughput.py --checkpoint final # the last Stage 1 checkpoint instead (builds Stage 1)
    python bench/harvest_throughput.py --model smollm2 --prompts 48 --dtypes fp32,bf16 --arms ours,generate
    python bench/harvest_throughput.py --tiny             # seconds (the test suite runs it)

Arms, all sampling softmax(logits / temperature) with nucleus top_p (the harvest's policy: no top-k, no
repetition penalty), ``max_new_tokens`` from the data config, stopping at the model's eos ids:

* ``loop``: one ``model.generate`` call per prompt (``num_return_sequences=k``): the obvious implementation;
  timed on every ``--loop-every``-th prompt (it is slow), reported as a rate;
* ``generate``: :class:`tms.generation.hf.HFGenerator` with ``decode="generate"`` (the harvest before the
  dropping decoder): requests sorted by length, left-padded batches of ``--batch`` rows, ``model.generate``;
* ``ours``: the harvest's default, the same batches decoded by :func:`tms.generation.decode.sample_dropping_finished`
  (finished rows leave the batch);
* ``generate_batch``: transformers' continuous batching (``model.generate_batch``, paged KV cache), where the
  installed transformers has it, with its default scheduler settings.

Printed per arm (and dtype): completions, seconds, completions/s, generated tokens/s, mean length, the fraction
that stopped on eos and, for the toy, the verifier's mean score (the same policy gives the same score up to
sampling noise: a check that no arm computes something else); then ``speedup[arm]=<ours compl/s / arm's>``
and last ``speedup=`` against the per-prompt loop. Threads: ``--threads`` (2: the CI machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("loop", "generate", "ours", "generate_batch")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def setup(a: argparse.Namespace):
    """(config, model directory, task, examples, prompt ids) of the benchmark's model and prompts."""
    from hydra.utils import instantiate

    from bench.sft_throughput import build_theta0, compose
    from tms.data.formatting import prompt_ids
    from tms.models.loading import load_tokenizer
    from tms.stages.base_model import resolve_base

    # a θ0 / Stage 1 cached by other code is reused (with a warning): throughput does not depend on which code built it
    overrides = ["method=sft", "trainer.enable_progress_bar=false", "cache_reuse=warn"]
    if a.model == "smollm2":
        overrides += ["model=smollm2-135m", "data=countdown"]
    if a.cache_dir:
        overrides.append(f"cache_dir={a.cache_dir}")
    cfg = compose(overrides)
    if a.tiny:  # the toy architecture with random weights: no pretraining
        path = str(build_theta0(Path(a.work) / "theta0", cfg))
    else:
        base = resolve_base(cfg)
        path = base.path
        if a.checkpoint == "final":
            from tms.stages.common import final_checkpoint
            from tms.stages.sft import run_sft

            path = final_checkpoint(run_sft(cfg, base)).path
    task = instantiate(cfg.data.task)
    examples = task.examples("train")[: a.prompts]
    tok = load_tokenizer(path)
    return cfg, path, task, examples, [prompt_ids(tok, task.messages(e)) for e in examples]


def load(path: str, dtype: str):
    import torch

    from tms.models.loading import load_model, load_tokenizer

    model = load_model(path, dtype=DTYPES[dtype], attn_implementation="sdpa").eval()
    return model.to(torch.device("cpu")), load_tokenizer(path)


def run_arm(arm: str, model, tok, prompts, k: int, sampling, batch: int, loop_every: int, seed: int):
    """(completions as token lists, the indices of the prompts they belong to, seconds)."""
    import torch

    from tms.generation.hf import HFGenerator

    gen = HFGenerator(model, tok, batch_size=batch, decode="generate" if arm == "generate" else "drop_finished")
    t0 = time.perf_counter()
    if arm in ("ours", "generate"):
        comps = gen.generate(prompts, k, sampling, seed=seed)
        return [c.token_ids for c in comps], [c.prompt_index for c in comps], time.perf_counter() - t0
    config = gen._generation_config(sampling)  # exactly the harvest's policy
    if arm == "loop":
        torch.manual_seed(seed)
        which = list(range(0, len(prompts), loop_every))
        t0 = time.perf_counter()
        out, index = [], []
        config.num_return_sequences = k
        with torch.no_grad(), gen._neutral_model_defaults():
            for p in which:
                ids = torch.tensor([list(prompts[p])])
                new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
                out += [gen._completion((p, j), row).token_ids for j, row in enumerate(new[:, ids.shape[1]:].tolist())]
                index += [p] * k
        return out, index, time.perf_counter() - t0
    if arm == "generate_batch":
        torch.manual_seed(seed)
        config.num_return_sequences = k
        with gen._neutral_model_defaults():
            res = model.generate_batch([list(p) for p in prompts], generation_config=config, progress_bar=False)
        outs = list(res.values())  # ordered as the inputs, each prompt's k samples together
        seconds = time.perf_counter() - t0
        if len(outs) != len(prompts) * k or any(o.error for o in outs):
            raise RuntimeError(f"generate_batch returned {len(outs)} of {len(prompts) * k} requests "
                               f"({sum(bool(o.error) for o in outs)} with errors)")
        toks = [gen._completion((0, 0), list(o.generated_tokens)).token_ids for o in outs]
        return toks, [i // k for i in range(len(outs))], seconds
    raise ValueError(f"unknown arm {arm!r}: expected one of {ARMS}")


def summary(arm, dtype, toks, index, seconds, tok, task, examples, eos) -> dict:
    n = len(toks)
    row = {"arm": arm, "dtype": dtype, "completions": n, "seconds": seconds, "compl_per_s": n / seconds,
           "tokens_per_s": sum(map(len, toks)) / seconds, "mean_len": sum(map(len, toks)) / n,
           "stop": sum(bool(t) and t[-1] in eos for t in toks) / n}
    if task is not None:
        texts = [tok.decode([x for x in t if x not in eos], skip_special_tokens=True) for t in toks]
        scores = task.score(texts, [examples[i].answer for i in index])
        row["score"] = sum(s for s in scores if s is not None) / n
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("toy", "smollm2"), default="toy")
    ap.add_argument("--checkpoint", choices=("theta0", "final"), default="theta0")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--dtypes", default="fp32")
    ap.add_argument("--prompts", type=int, default=2000, help="the first N train prompts")
    ap.add_argument("--k", type=int, default=1, help="samples per prompt (harvest.samples_per_prompt)")
    ap.add_argument("--batch", type=int, default=256, help="rows per batch (harvest.batch_size)")
    ap.add_argument("--loop-every", type=int, default=8, help="the loop arm times every N-th prompt")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: data.max_new_tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="stage cache holding θ0 (default: the config's cache_dir)")
    ap.add_argument("--work", default="/tmp/tms-harvest-bench", help="--tiny's random-init θ0")
    ap.add_argument("--tiny", action="store_true", help="random-init toy model, 24 prompts, 6 new tokens")
    a = ap.parse_args()
    if a.tiny:
        a.prompts, a.batch, a.loop_every, a.max_new_tokens = 24, 8, 4, a.max_new_tokens or 6
    import platform

    import torch
    import transformers

    from tms.generation.base import SamplingParams
    from tms.generation.hf import eos_ids

    torch.set_num_threads(a.threads)
    cfg, path, task, examples, prompts = setup(a)
    sampling = SamplingParams(temperature=float(cfg.harvest.temperature), top_p=float(cfg.harvest.top_p),
                              max_new_tokens=int(a.max_new_tokens or cfg.harvest.max_new_tokens))
    arms = [x for x in a.arms.split(",") if x]
    if "generate_batch" in arms and not hasattr(transformers.GenerationMixin, "generate_batch"):
        print(f"transformers {transformers.__version__} has no generate_batch: arm skipped")
        arms.remove("generate_batch")
    print(f"# {platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; model {a.model} ({a.checkpoint}: {path}); "
          f"{len(prompts)} prompts x k={a.k}, batch {a.batch}, max_new_tokens {sampling.max_new_tokens}, "
          f"temperature {sampling.temperature}, top_p {sampling.top_p}")
    rows = []
    for dtype in a.dtypes.split(","):
        model, tok = load(path, dtype)
        eos = set(eos_ids(model, tok))
        for arm in arms:
            toks, index, seconds = run_arm(arm, model, tok, prompts, a.k, sampling, a.batch, a.loop_every, a.seed)
            row = summary(arm, dtype, toks, index, seconds, tok, task, examples, eos)
            rows.append(row)
            print(f"{arm:>15} {dtype}: {row['completions']:5d} completions in {seconds:7.2f} s = "
                  f"{row['compl_per_s']:8.1f} compl/s, {row['tokens_per_s']:8.0f} tok/s, mean length "
                  f"{row['mean_len']:5.1f}, stop {row['stop']:.3f}" + (f", score {row['score']:.3f}" if "score" in row else ""),
                  flush=True)
    by = {(r["arm"], r["dtype"]): r for r in rows}
    for dtype in a.dtypes.split(","):
        ours = by.get(("ours", dtype))
        for (arm, d), r in by.items():
            if ours is not None and d == dtype and arm != "ours":
                print(f"speedup[{arm},{dtype}]={ours['compl_per_s'] / r['compl_per_s']:.2f}")
    if ("ours", "bf16") in by and ("ours", "fp32") in by:
        print(f"bf16_vs_fp32[ours]={by['ours', 'bf16']['compl_per_s'] / by['ours', 'fp32']['compl_per_s']:.2f}")
    first = a.dtypes.split(",")[0]
    if ("ours", first) in by and ("loop", first) in by:
        print(f"speedup={by['ours', first]['compl_per_s'] / by['loop', first]['compl_per_s']:.2f}")
    else:
        print("speedup=nan (the ours or loop arm did not run)")


if __name__ == "__main__":
    main()
