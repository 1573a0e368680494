"""``trainer=fsdp`` / ``trainer=fsdp2`` on GPU against ``trainer=gpu``: SFT steps, peak memory, tokens/s, export.

    python bench/fsdp_gpu.py                                  # qwen2.5-0.5b shape, 1 GPU: gpu, fsdp, fsdp2
    python bench/fsdp_gpu.py --shape qwen2.5-1.5b --steps 30 --batch 4 --length 1024
    python bench/fsdp_gpu.py --trainers fsdp --devices 8      # 8 GPUs (starts one process per GPU)

A Qwen2.5-shaped model with random weights is built from its architecture config (no download) and saved
once as an HF directory; each trainer config (``conf/trainer/<name>.yaml``, composed as the pipeline would)
then trains :class:`tms.methods.sft.SFTModule` on random token sequences through
:func:`tms.training.loop.build_trainer` (same strategy, precision, clipping and accumulation code as a real
stage), and exports the consolidated HF checkpoint with ``export_hf`` at the end (checking that it reloads
and that its loss on a fixed batch matches the trained model's). Printed per trainer: peak GPU memory,
steady-state tokens/s (steps after the first 3), the loss of the first and last step, the export time, and
the ratio against the first trainer. Each trainer runs in its own process (``python bench/fsdp_gpu.py --one``)
so peak memory is not shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.throughput import SHAPES  # noqa: E402


def compose(overrides: list[str]):
    """The repo's Hydra config with ``overrides`` (what ``python train.py ...`` would get)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def save_model(shape: str, out: Path) -> None:
    """A random Qwen2.5-shaped model in bf16 as an HF directory (the pipeline's θ0 format)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").is_file():
        return
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**SHAPES[shape], torch_dtype="bfloat16")).to(torch.bfloat16).save_pretrained(out)


class _NoTokenizer:
    def save_pretrained(self, path: str) -> None:  # export_hf saves a tokenizer next to the weights
        Path(path, "tokenizer.txt").write_text("random-weights benchmark: no tokenizer\n")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timer_callback(warmup: int = 3):
    """A Lightning callback recording each step's loss, and wall time and tokens of the steps after ``warmup``."""
    import lightning as L

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.tokens, self.seconds, self.losses, self._t = 0, 0.0, [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sync()
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync()
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))
            if len(self.losses) > warmup:
                self.seconds += time.perf_counter() - self._t
                self.tokens += int(batch["attention_mask"].sum()) * trainer.world_size

    return Timer()


def run_one(args: argparse.Namespace) -> dict:
    """Train with one trainer config in this process; returns the measurements (rank 0)."""
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from tms.core import distributed
    from tms.methods.sft import SFTModule
    from tms.training.loop import build_trainer

    model_dir = Path(args.model_dir)
    cfg = compose([f"trainer={args.trainer}", f"model.name_or_path={model_dir}", "model.dtype=bfloat16",
                   f"model.gradient_checkpointing={str(args.checkpointing).lower()}", "trainer.enable_progress_bar=false",
                   f"trainer.devices={args.devices}"])
    train = OmegaConf.create({"epochs": 1, "max_steps": args.steps, "batch_size": args.batch,
                              "accumulate_grad_batches": 1, "gradient_clip_val": 1.0})
    with distributed.session(cfg.trainer):
        g = torch.Generator().manual_seed(distributed.rank())
        vocab = SHAPES[args.shape]["vocab_size"]
        data = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
                for ids in torch.randint(0, vocab, (args.steps * args.batch, args.length), generator=g)]
        loader = DataLoader(data, batch_size=args.batch)
        module = SFTModule(str(model_dir), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5),
                           model_kwargs={"dtype": cfg.model.dtype, "attn_implementation": "sdpa"},
                           gradient_checkpointing=args.checkpointing)
        timer = timer_callback()
        out = Path(tempfile.mkdtemp(prefix=f"bench-{args.trainer}-"))
        trainer = build_trainer(cfg.trainer, train, out, [timer], logger=False)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(module, train_dataloaders=loader)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        t0 = time.perf_counter()
        module.export_hf(out / "export", _NoTokenizer())
        export_s = time.perf_counter() - t0
        result = {"trainer": args.trainer, "world": trainer.world_size, "peak_gib": round(peak, 2),
                  "tokens_per_s": round(timer.tokens / max(timer.seconds, 1e-9)), "first_loss": timer.losses[0],
                  "last_loss": timer.losses[-1], "export_s": round(export_s, 1)}
        if distributed.is_zero():
            from transformers import AutoModelForCausalLM

            device = "cuda" if cuda else "cpu"
            back = AutoModelForCausalLM.from_pretrained(out / "export", dtype=torch.float32).to(device)
            ids = data[0]["input_ids"][None].to(device)
            with torch.no_grad():
                result["export_loss"] = round(float(back(input_ids=ids, labels=ids).loss), 4)
    return result


def run_trainers(shape: str, trainers: list[str], devices: int, steps: int, batch: int, length: int,
                 checkpointing: bool = False, allow_cpu: bool = False) -> list[dict]:
    """Each trainer config in its own process(es) on the same random ``shape`` model; one result dict per trainer
    that ran (a failed one is reported on stdout and left out)."""
    model_dir = Path(tempfile.gettempdir()) / f"tms-bench-{shape}"
    save_model(shape, model_dir)
    rows = []
    # several GPUs: torchrun starts the ranks (tms.core.distributed.session joins them)
    launcher = [sys.executable] if devices == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                      f"--nproc-per-node={devices}"]
    for name in trainers:
        cmd = [*launcher, __file__, "--one", f"--trainer={name}", f"--model-dir={model_dir}", f"--shape={shape}",
               f"--devices={devices}", f"--steps={steps}", f"--batch={batch}", f"--length={length}"]
        cmd += (["--checkpointing"] if checkpointing else []) + (["--allow-cpu"] if allow_cpu else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--trainers", default="gpu,fsdp,fsdp2", help="trainer configs, the first is the baseline")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="sequences per GPU per step")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of each decoder layer")
    parser.add_argument("--allow-cpu", action="store_true", help="run CPU trainers (cpu, ddp_cpu, fsdp2_cpu): a check")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("bench/fsdp_gpu.py needs a CUDA GPU (or --allow-cpu with CPU trainers)")
    if args.one:  # a child: one trainer, print one JSON line
        result = run_one(args)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and "export_loss" in result:
            print("RESULT " + json.dumps(result), flush=True)
        return
    rows = run_trainers(args.shape, args.trainers.split(","), args.devices, args.steps, args.batch, args.length,
                        args.checkpointing, args.allow_cpu)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\n{args.shape}, {args.devices} device(s) ({device}), batch {args.batch} x {args.length} "
          f"tokens per GPU, {args.steps} steps, activation checkpointing {args.checkpointing}")
    print(f"{'trainer':8} {'peak GiB':>9} {'tokens/s':>10} {'x base':>7} {'loss 1st':>9} {'loss last':>9} "
          f"{'export s':>9} {'export loss':>11}")
    for r in rows:
        ratio = r["tokens_per_s"] / max(rows[0]["tokens_per_s"], 1)
        print(f"{r['trainer']:8} {r['peak_gib']:9.2f} {r['tokens_per_s']:10d} {ratio:7.2f} {r['first_loss']:9.4f} "
              f"{r['last_loss']:9.4f} {r['export_s']:9.1f} {r['export_loss']:11.4f}")


if __name__ == "__main__":
    main()
