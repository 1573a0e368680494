"""Build the toy world's base model θ0: tokenizer, a small Qwen2 from config, and its pretraining.

θ0 is *pretrained* (from random init) on a mixture of the retention skills plus a small share of
target prompts answered in θ0's own "native" style, until it is competent at the skills. The
pretraining is the ordinary SFT module and training loop (reference targets on a task mixture),
so this stage exercises the same code as Stage 1. The result is saved with ``save_pretrained``
and loaded everywhere through :func:`tms.models.loading.load_model`, exactly like a hub model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tms.core.cache import Stage
from tms.core.keys import plain, stage
from tms.data.datamodule import PostTrainDataModule
from tms.data.tasks.mixture import TaskMixture
from tms.evaluation.suite import greedy_scores
from tms.generation.hf import HFGenerator
from tms.methods.sft import SFTModule
from tms.models.loading import load_tokenizer
from tms.toy.skills import GENERATORS, STYLED
from tms.toy.tasks import ToyTask
from tms.toy.tokenizer import build_and_save
from tms.training.loop import fit

log = logging.getLogger(__name__)


def tokenizer_corpus(seed: int, n: int = 400) -> list[str]:
    """Prompts and references of every toy generator in every style (the tokenizer's training text)."""
    corpus: list[str] = []
    for skill in sorted(GENERATORS):
        for style in (("teacher", "native") if skill in STYLED else ("teacher",)):
            task = ToyTask(skill, n_train=n, n_val=0, n_test=0, seed=seed + 991, style=style)
            for e in task.examples("train"):
                corpus += [e.prompt, e.reference]
    return corpus


def pretraining_task(build: DictConfig) -> TaskMixture:
    """The skills (``skills: {skill: n}``) plus native-style target examples (``native: {task: n}``).

    ``repeat: {skill: r}`` shows a skill's examples r times per epoch (addition with carries is
    the slowest skill to learn); ``direct_share: {task: p}`` answers a share p of a target's native
    examples with the bare answer. ``held_out: {skill: k}``: the first k unique prompts of that skill's
    stream are never pretraining data; the toy benchmarks' test (and the target task's test, val and
    train) splits are drawn from that prefix of the same stream (same seed), so θ0 never sees them
    (:func:`tms.config.inputs.check_toy_held_out` checks the sizes).
    """
    seed, held = int(build.seed), {str(k): int(v) for k, v in (build.get("held_out") or {}).items()}
    shares = dict(build.get("direct_share") or {})
    tasks = [ToyTask(s, n_train=int(n), n_val=int(build.n_val), n_test=held.get(s, 0), seed=seed)
             for s, n in build.skills.items()]
    for skill, n in (build.get("native") or {}).items():
        if int(n) > 0:
            tasks.append(ToyTask(skill, n_train=int(n), n_val=int(build.n_val), n_test=held.get(skill, 0), seed=seed,
                                 style="native",
                                 name=f"{skill}_native", direct_share=float(shares.get(skill, 0.0))))
    return TaskMixture(tasks, name="toy_pretrain", repeats=dict(build.get("repeat") or {}))


def init_model(tokenizer, arch: DictConfig, seed: int):
    """A randomly initialised ``Qwen2ForCausalLM`` sized by ``arch``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **OmegaConf.to_container(arch, resolve=True),
    )
    torch.manual_seed(int(seed))
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_base_model(out_dir: Path, build: DictConfig, trainer_cfg: DictConfig, seed: int) -> dict[str, Any]:
    """Tokenizer → random Qwen2 → pretraining on the skill mixture → ``out_dir/model``.

    Returns info for the manifest: parameter count, pretraining steps and time.
    """
    from hydra.utils import instantiate

    out_dir = Path(out_dir)
    init_dir = out_dir / "init"
    if not (init_dir / "config.json").is_file():
        tok = build_and_save(tokenizer_corpus(int(build.seed)), init_dir, vocab_size=int(build.vocab_size))
        model = init_model(tok, build.architecture, seed=int(build.seed))
        model.save_pretrained(str(init_dir), safe_serialization=True)
    tok = load_tokenizer(str(init_dir))
    n_params = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(init_dir / "model.safetensors")).values())

    pre = build.pretrain
    task = pretraining_task(build)
    dm = PostTrainDataModule(task, batch_size=int(pre.batch_size), max_length=int(build.max_length), seed=int(build.seed),
                             packing=bool(pre.get("packing", False)))
    dm.connect(tok)
    module = SFTModule(str(init_dir), optimizer=instantiate(pre.optimizer), scheduler=instantiate(pre.scheduler),
                       model_kwargs={"dtype": "float32"})
    info = fit(module, dm, tok, out_dir / "pretrain", pre, trainer_cfg, None, seed=int(build.seed),
               num_checkpoints=1, name="pretrain")
    final = out_dir / "pretrain" / "checkpoints" / "t=01"
    model_dir = out_dir / "model"
    if final.exists() or not model_dir.exists():  # else: moved already by a run killed after the move
        if model_dir.exists():
            import shutil

            shutil.rmtree(model_dir)
        final.rename(model_dir)
    return {"parameters": int(n_params), "pretrain": info, "train_examples": len(dm.train_examples),
            "skill_accuracy": skill_accuracy(model_dir, task, int(build.get("eval_n", 200)), int(build.seed))}


def skill_accuracy(model_dir: Path, mixture: TaskMixture, n: int, seed: int) -> dict[str, float]:
    """Greedy accuracy of θ0 on each pretraining skill's held-out prompts (recorded in the manifest)."""

    gen = HFGenerator.from_pretrained(str(model_dir), batch_size=256, device="cpu", dtype="float32")
    out = {}
    for name, task in mixture.tasks.items():
        held_out = ToyTask(task.skill, n_train=0, n_val=0, n_test=n, seed=task.seed + 1, style=task.style)
        out[name] = round(greedy_scores(gen, held_out, held_out.examples("test"), 48, seed)[0], 4)
    return out


def toy_base_stage(cfg: DictConfig) -> Stage:
    """The cached stage of the toy world's θ0 (``model.build``), built or not."""
    return stage(cfg, "base", {"build": plain(cfg.model.build), "precision": cfg.trainer.precision})
