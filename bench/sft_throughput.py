"""Stage 1 SFT on the toy: tms against Hugging Face ``Trainer`` and TRL's ``SFTTrainer`` (what a user would pick).

    python bench/sft_throughput.py                    # the toy Stage 1: 2000 pairs, batch 16, 3 epochs (375 steps)
    python bench/sft_throughput.py --tiny             # seconds (the test suite runs it)
    python bench/sft_throughput.py --arms hf,tms_packed --precisions bf16

Every arm trains the same θ0 (the toy world's randomly initialised Qwen2 and its tokenizer, the ``init`` of the toy
base build: SFT cost does not depend on the weights, and building it takes seconds instead of the pretraining's
minutes) on the same prompt + reference pairs (the project's chat formatting and prompt masking:
:class:`tms.data.datamodule.PostTrainDataModule`), with the same batch, epochs, AdamW, cosine-with-warmup schedule
(:func:`tms.training.optim.cosine_with_warmup`, handed to the HF trainers as their scheduler), gradient clipping and
precision, on ``--threads`` CPU threads. Arms (each in its own process, so memory and thread pools are not shared):

* ``hf``: ``transformers.Trainer``, the project's right-padded collator, no evaluation, no checkpoint saving;
* ``trl``: TRL's ``SFTTrainer`` on the pre-tokenised pairs with ``completion_mask`` (completion-only loss);
  ``trl_padding_free``: the same with ``padding_free=True``;
* ``tms_padded`` / ``tms_packed``: our Stage 1 exactly as ``python train.py`` runs it (:func:`tms.stages.sft.run_sft`
  through the stage cache: Lightning, the T=10 trajectory checkpoints with the held-out PLD pass at each, the
  resumable ``last.ckpt`` every 50 steps) with ``sft.packing`` false / true, and the fused AdamW the other arms
  use (``model.fused_optimizer=true``; the toy's default is the per-tensor loop, see docs/scale.md);
* ``plain``: the floor of any trainer that runs the model's forward and loss as they are: a bare PyTorch loop of the
  same steps (the collated batches, forward with the model's own loss, backward, clipping, AdamW, schedule) with nothing
  else — no logging, no checkpoints, no callbacks. ``hf seconds / plain seconds`` is the most such a trainer
  could gain over HF ``Trainer`` here (printed as ``ceiling=``); ``plain_compiled``: the same loop with the model
  under ``torch.compile(dynamic=True)`` (one graph for every batch length), its cold compilation (an empty inductor
  cache) included in the time; ``plain_compiled_warm``: the same in a new process with the inductor cache the cold arm
  left (what a second run on the same machine and shapes pays: Dynamo still traces, inductor's FX-graph and AOTAutograd
  caches skip the code generation; each compiled arm prints the FX-graph cache's hits and misses). Neither runs by
  default (minutes of compiling on 2 cores); asking for the warm arm runs the cold one before it.

Printed per arm and precision: wall seconds (model load to the end of training), real (non-pad) tokens/s, peak RSS
and the first/last logged loss; then ``speedup[arm,precision]=<hf seconds / tms seconds>``, what bf16-mixed buys each trainer
(``bf16_vs_fp32``) and last ``speedup=`` for the toy's default configuration (``sft.packing`` from
``model.packing``: padded on the toy) in fp32, the toy's default precision.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("hf", "trl", "trl_padding_free", "tms_padded", "tms_packed", "plain", "plain_compiled", "plain_compiled_warm")
COMPILED = ("plain_compiled", "plain_compiled_warm")  # not run by default (minutes of compiling)
PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}  # Lightning names of the two precisions


def compose(overrides: list[str]):
    """The repo's Hydra config with ``overrides`` (what ``python train.py ...`` would get)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def settings(tiny: bool) -> list[str]:
    """Config overrides shared by every arm (the toy Stage 1, or a tiny slice of it)."""
    base = ["method=sft", "trainer.enable_progress_bar=false", "logger=csv"]
    return base + (["data.train_limit=64", "data.val_limit=16", "sft.epochs=1", "sft.num_checkpoints=2"] if tiny else [])


def build_theta0(out: Path, cfg) -> Path:
    """The toy world's tokenizer and randomly initialised Qwen2 (what its pretraining starts from) in ``out``."""
    from tms.toy.tokenizer import build_and_save
    from tms.toy.world import init_model, tokenizer_corpus

    build = cfg.model.build
    if not (out / "config.json").is_file():
        tok = build_and_save(tokenizer_corpus(int(build.seed)), out, vocab_size=int(build.vocab_size))
        init_model(tok, build.architecture, seed=int(build.seed)).save_pretrained(str(out), safe_serialization=True)
    return out


def pairs(cfg, tok):
    """The train pairs ``(input_ids, n_prompt)`` of epoch 0 (references: every epoch draws the same targets)."""
    from hydra.utils import instantiate

    from tms.data.datamodule import PostTrainDataModule

    dm = PostTrainDataModule(instantiate(cfg.data.task), batch_size=int(cfg.sft.batch_size),
                             max_length=int(cfg.data.max_length), seed=int(cfg.seed),
                             train_limit=cfg.data.get("train_limit"), val_limit=cfg.data.get("val_limit")).connect(tok)
    return dm.draw_epoch(0)


def hf_arguments(cfg, out: Path, bf16: bool, **extra):
    """``TrainingArguments`` (or TRL's ``SFTConfig`` via ``extra``) matching ``cfg.sft``."""
    o = cfg.sft.optimizer
    kwargs = dict(output_dir=str(out), per_device_train_batch_size=int(cfg.sft.batch_size),
                  num_train_epochs=int(cfg.sft.epochs), learning_rate=float(o.lr), adam_beta1=float(o.betas[0]),
                  adam_beta2=float(o.betas[1]), weight_decay=float(o.weight_decay),
                  max_grad_norm=float(cfg.sft.gradient_clip_val), use_cpu=True, bf16=bf16, save_strategy="no",
                  eval_strategy="no", report_to=[], logging_steps=10, dataloader_num_workers=0, seed=int(cfg.seed),
                  disable_tqdm=True)
    if extra.pop("trl", False):
        from trl import SFTConfig

        return SFTConfig(**kwargs, **extra)
    from transformers import TrainingArguments

    return TrainingArguments(**kwargs, remove_unused_columns=False)


def optimizers(model, cfg, total_steps: int):
    """The same AdamW (fused, as both our Stage 1 and ``Trainer``'s default ``adamw_torch_fused`` build it) and
    schedule as our Stage 1 (the config's own factories)."""
    from hydra.utils import instantiate

    from tms.training.optim import build_optimizer

    opt = build_optimizer(instantiate(cfg.sft.optimizer), [p for p in model.parameters() if p.requires_grad])
    return opt, instantiate(cfg.sft.scheduler)(opt, total_steps=total_steps)


def load_theta0(cfg, theta0: Path, items):
    """θ0's tokenizer and fp32 SDPA model, and the optimiser steps of ``cfg.sft.epochs`` passes over ``items``
    (what the HF arms and the bare loop start from)."""
    from tms.models.loading import load_model, load_tokenizer

    steps = -(-len(items) // int(cfg.sft.batch_size)) * int(cfg.sft.epochs)
    return load_tokenizer(str(theta0)), load_model(str(theta0), dtype="float32", attn_implementation="sdpa"), steps


def run_hf(cfg, theta0: Path, items, out: Path, bf16: bool, trl: str | None) -> dict:
    """``transformers.Trainer`` (``trl`` None) or TRL's ``SFTTrainer`` (``trl`` = "padded" / "padding_free")."""
    from tms.data.formatting import Collator

    tok, model, steps = load_theta0(cfg, theta0, items)
    if trl is None:
        from transformers import Trainer

        collate = Collator(tok.pad_token_id)
        trainer = Trainer(model=model, args=hf_arguments(cfg, out, bf16), train_dataset=list(items),
                          data_collator=collate, optimizers=optimizers(model, cfg, steps))
    else:
        from datasets import Dataset
        from trl import SFTTrainer

        data = Dataset.from_dict({"input_ids": [ids for ids, _ in items],
                                  "completion_mask": [[0] * n + [1] * (len(ids) - n) for ids, n in items]})
        args = hf_arguments(cfg, out, bf16, trl=True, max_length=None, completion_only_loss=True,  # pairs already fit
                            padding_free=trl == "padding_free", dataset_kwargs={"skip_prepare_dataset": False})
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             optimizers=optimizers(model, cfg, steps))
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"train_seconds": train_s, "steps": int(trainer.state.global_step), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None}


def run_plain(cfg, theta0: Path, items, compiled: bool = False) -> dict:
    """The bare loop (see ``plain`` in the module docstring): HF's loss on the project's right-padded batches;
    ``compiled``: the model's forward under ``torch.compile`` (compilation inside the timed loop)."""
    import torch

    from tms.data.formatting import Collator

    tok, model, steps = load_theta0(cfg, theta0, items)
    model.config.use_cache = False
    model.train()
    collate, bs, epochs = Collator(tok.pad_token_id), int(cfg.sft.batch_size), int(cfg.sft.epochs)
    opt, sched = optimizers(model, cfg, steps)
    clip, losses = float(cfg.sft.gradient_clip_val), []
    t0 = time.perf_counter()
    forward = torch.compile(model, dynamic=True) if compiled else model
    for _ in range(epochs):
        for i in range(0, len(items), bs):
            b = collate(items[i:i + bs])
            loss = forward(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
    train_s = time.perf_counter() - t0
    res = {"train_seconds": train_s, "steps": len(losses), "first_loss": float(losses[0]),
           "last_loss": float(losses[-1])}
    if compiled:  # what inductor's FX-graph cache served (the warm arm's hits) and compiled (the cold arm's misses)
        from torch._dynamo.utils import counters

        res["fxgraph_cache"] = {k: int(counters["inductor"][f"fxgraph_cache_{k}"]) for k in ("hit", "miss")}
    return res


def run_tms(cfg, theta0: Path, out: Path) -> dict:
    """Our Stage 1 through the stage cache in ``out`` (θ0 given as a local model directory)."""
    import csv

    from tms.cli.common import setup
    from tms.stages.base_model import resolve_base
    from tms.stages.sft import run_sft

    setup(cfg, out / "run")
    t0 = time.perf_counter()
    stage = run_sft(cfg, resolve_base(cfg))
    wall = time.perf_counter() - t0
    info = stage.manifest()["info"]
    log = next(stage.dir.glob("logs/**/metrics.csv"), None)  # none when training was shorter than log_every_n_steps
    rows = list(csv.DictReader(open(log))) if log is not None else []
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    return {"train_seconds": float(info["train_seconds"]), "stage_seconds": wall, "steps": int(info["global_steps"]),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def one(a: argparse.Namespace) -> None:
    """Run one arm at one precision in this process; print its JSON."""
    import torch

    torch.set_num_threads(a.threads)
    work = Path(a.work)
    theta0, cache = work / "theta0", work / f"cache-{a.one}{a.precision}"
    for old in (cache, work / f"{a.one}-{a.precision}"):  # a kept --work dir: never time a cached Stage 1
        shutil.rmtree(old, ignore_errors=True)
    if a.one in COMPILED:
        if a.one == "plain_compiled":  # a cold compile: inductor's cache of an earlier run would hide its cost
            shutil.rmtree(work / "inductor-cache", ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    overrides = settings(a.tiny) + [f"model.name_or_path={theta0}", f"cache_dir={cache}",
                                    f"trainer.precision={PRECISION[a.precision]}"]
    if a.one.startswith("tms"):  # the same fused AdamW as every other arm (the toy's own default is the per-tensor
        # loop, model.fused_optimizer=false: its results hang on float rounding, docs/scale.md; ≈ 6 ms a step more)
        overrides += [f"sft.packing={str(a.one == 'tms_packed').lower()}", "model.fused_optimizer=true"]
    cfg = compose(overrides)
    from tms.models.loading import load_tokenizer

    items = pairs(cfg, load_tokenizer(str(theta0)))
    tokens = sum(len(ids) for ids, _ in items) * int(cfg.sft.epochs)
    t0 = time.perf_counter()
    if a.one.startswith("tms"):
        res = run_tms(cfg, theta0, work / f"{a.one}-{a.precision}")
    elif a.one.startswith("plain"):
        if a.precision != "fp32":
            raise SystemExit("the plain arms run fp32 only (the floor of the fp32 comparison)")
        res = run_plain(cfg, theta0, items, compiled=a.one in COMPILED)
    else:
        trl = {"hf": None, "trl": "padded", "trl_padding_free": "padding_free"}[a.one]
        res = run_hf(cfg, theta0, items, work / f"{a.one}-{a.precision}", a.precision == "bf16", trl)
    res["seconds"] = time.perf_counter() - t0
    res.update(arm=a.one, precision=a.precision, tokens=tokens, tokens_per_s=tokens / res["seconds"],
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny slice of the toy Stage 1 (seconds)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arms", default=",".join(a for a in ARMS if a not in COMPILED))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, deleted)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        return one(a)
    import torch
    import transformers

    arms, precisions = a.arms.split(","), a.precisions.split(",")
    unknown = [x for x in arms if x not in ARMS] + [p for p in precisions if p not in PRECISION]
    if unknown:
        raise SystemExit(f"unknown arm or precision {unknown[0]!r} (arms: {', '.join(ARMS)}; precisions: fp32, bf16)")
    if "plain_compiled_warm" in arms and "plain_compiled" not in arms[:arms.index("plain_compiled_warm")]:
        arms.insert(arms.index("plain_compiled_warm"), "plain_compiled")  # it fills the cache the warm arm reads
    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version, arms = None, [x for x in arms if not x.startswith("trl")]
        print("TRL is not installed: its arms are skipped (pip install trl)")
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        build_theta0(work / "theta0", compose(settings(a.tiny)))
        print(f"{platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}, "
              f"transformers {transformers.__version__}, trl {trl_version}")
        results = []
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
        for precision in precisions:
            for arm in arms:
                if arm.startswith("plain") and precision != "fp32":
                    continue
                cmd = [sys.executable, __file__, "--one", arm, "--precision", precision, "--threads", str(a.threads),
                       "--work", str(work)] + (["--tiny"] if a.tiny else [])
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    raise SystemExit(f"arm {arm} ({precision}) failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[len("RESULT "):])
                results.append(r)
                loss = f"{r['first_loss']:.3f} → {r['last_loss']:.3f}" if r["last_loss"] is not None else "-"
                cache = (f"  inductor FX-graph cache: {r['fxgraph_cache']['hit']} hits, {r['fxgraph_cache']['miss']} "
                         "misses" if "fxgraph_cache" in r else "")
                print(f"{arm:18s} {precision:5s} {r['seconds']:7.1f} s  {r['tokens_per_s']:8.0f} tok/s  "
                      f"{r['steps']:4d} steps  peak RSS {r['peak_rss_mib']:6.0f} MiB  loss {loss}{cache}", flush=True)
    by = {(r["arm"], r["precision"]): r["seconds"] for r in results}
    ours = "tms_packed" if compose(settings(a.tiny)).sft.packing else "tms_padded"  # the default configuration
    for precision in precisions:
        for arm in ("tms_padded", "tms_packed"):
            if ("hf", precision) in by and (arm, precision) in by:
                print(f"speedup[{arm},{precision}]={by[('hf', precision)] / by[(arm, precision)]:.3f}")
    for arm in arms:
        if (arm, "fp32") in by and (arm, "bf16") in by:
            print(f"bf16_vs_fp32[{arm}]={by[(arm, 'fp32')] / by[(arm, 'bf16')]:.3f}")
    if ("hf", "fp32") in by and ("plain", "fp32") in by:
        print(f"ceiling={by[('hf', 'fp32')] / by[('plain', 'fp32')]:.3f}   (HF Trainer / the bare loop: the most any "
              "trainer gains over HF Trainer here without changing the model's arithmetic)")
    if ("plain", "fp32") in by and ("plain_compiled", "fp32") in by:
        print(f"compiled_vs_plain={by[('plain', 'fp32')] / by[('plain_compiled', 'fp32')]:.3f}   (torch.compile, "
              "its cold compilation included)")
    if ("plain", "fp32") in by and ("plain_compiled_warm", "fp32") in by:
        print(f"compiled_warm_vs_plain={by[('plain', 'fp32')] / by[('plain_compiled_warm', 'fp32')]:.3f}   "
              "(torch.compile from a warm inductor cache)")
    if ("hf", "fp32") in by and (ours, "fp32") in by:
        print(f"speedup={by[('hf', 'fp32')] / by[(ours, 'fp32')]:.3f}   (HF Trainer / {ours}, the toy's default, fp32)")

if __name__ == "__main__":
    main()
