"""Checks of the inputs, and of the inputs against each other, run by :func:`tms.config.validate.validate` before any
compute:

* θ0's source (a local directory must hold an HF model; a hub id must look like one), its dtype and
  attention implementation; the cache directory (writable, nothing is created);
* ``model.lora`` (:func:`check_lora`): the adapters' settings, peft, the trainer, the target modules;
* batch sizes against the number of training examples;
* ``data.max_length`` and the prompts (+ the tokens the harvest and RL rollouts generate) against
  the model's context (``max_position_embeddings``), and the prompts against ``data.max_length``;
* credentials written literally into the config (they would end up in ``config.resolved.yaml``).

The model's context and tokenizer are read without compute or network: from the local model
directory, the Hugging Face cache, the toy world's ``model.build`` or its cached θ0 stage. When
they are not available (a hub model not downloaded yet) the length checks that need them are skipped;
the data module still drops over-long prompts with a warning. Before the toy θ0 is built, its prompt
lengths are bounded from below without its tokenizer (:func:`toy_prompt_lengths`).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from tms.core.cache import REUSE_MODES
from tms.core.checks import integer, locate, require
from tms.objectives.head_logprobs import IMPLS
from tms.core.errors import ConfigError
from tms.core.redact import secret_items
from tms.data.formatting import prompt_ids
from tms.data.tasks.base import Example, Task
from tms.models.gguf import locate_gguf
from tms.models.loading import DTYPES, check_model_source, load_tokenizer
from tms.models.lora import LoraSettings, apply_lora, check_peft
from tms.toy.tasks import ToyTask
from tms.toy.tokenizer import QWEN2_PATTERN
from tms.toy.world import toy_base_stage

log = logging.getLogger(__name__)

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_logprob_impl(m: DictConfig) -> None:
    """``model.logprob_impl``: ``chunked`` or ``liger`` (with ``model.logprob_chunk`` set, liger-kernel installed and
    a CUDA GPU: its Triton kernels do not run on a CPU)."""
    impl = m.get("logprob_impl") or "chunked"
    require(impl in IMPLS, "model.logprob_impl", f"must be one of {IMPLS}, got {impl!r}")
    if impl != "liger":
        return
    require(bool(m.get("logprob_chunk")), "model.logprob_impl",
            "liger replaces the memory-bounded head path: set model.logprob_chunk too (e.g. 512)")
    require(importlib.util.find_spec("liger_kernel") is not None, "model.logprob_impl",
            "liger needs the liger-kernel package (pip install liger-kernel); or use model.logprob_impl=chunked")
    import torch

    require(torch.cuda.is_available(), "model.logprob_impl",
            "liger's kernels need a CUDA GPU and none is visible; use model.logprob_impl=chunked")


def check_model(cfg: DictConfig) -> None:
    """``model.dtype``, ``model.generation_dtype``, ``model.cpu_bf16``, ``model.attn_implementation`` and where θ0
    comes from (a local path must exist)."""

    m = cfg.model
    dtype = m.get("dtype", "auto")
    require(dtype in (None, "auto") or dtype in DTYPES, "model.dtype",
            f"unknown dtype {dtype!r}; expected 'auto' or one of {sorted(DTYPES)}")
    gen = m.get("generation_dtype")
    require(gen is None or gen in DTYPES, "model.generation_dtype",
            f"unknown dtype {gen!r}; expected null (model.dtype) or one of {sorted(DTYPES)}")
    require(isinstance(m.get("cpu_bf16", False), bool), "model.cpu_bf16",
            f"must be true or false, got {m.get('cpu_bf16')!r}")
    integer("model.logprob_chunk", m.get("logprob_chunk"), optional=True)  # positions per LM-head chunk; null: all
    check_logprob_impl(m)
    attn = m.get("attn_implementation")
    if attn is not None:
        try:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            known = {"eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()}
        except ImportError:  # another transformers version: from_pretrained checks it
            known = {str(attn)}
        name = str(attn)
        ok = name in known or name.removeprefix("paged|") in known or "/" in name  # "org/name": a hub kernel
        require(ok, "model.attn_implementation", f"{name!r} is not one of {sorted(known)} (or a hub kernel 'org/name')")
    if m.get("name_or_path"):
        try:
            check_model_source(str(m.name_or_path))
        except FileNotFoundError as err:
            raise ConfigError(f"{err}; give a saved HF model directory or a hub id") from err
    elif m.get("gguf") is not None:  # fails with the install command when the package is missing

        locate_gguf(m.gguf)
    else:
        require(m.get("build") is not None, "model.build",
                "needed when model.name_or_path and model.gguf are null (toy world)")


def check_lora(cfg: DictConfig) -> None:
    """``model.lora`` (null: full fine-tuning): its keys, types and ranges, peft installed, a trainer it works with
    (not FSDP1), and its target modules against the model's architecture when the model's config is at hand
    (instantiated on the meta device: no weights read, no download)."""
    settings = LoraSettings.from_config(cfg.model.get("lora"))
    if settings is None:
        return
    check_peft()
    require(not is_fsdp1(cfg.trainer.get("strategy")), "model.lora",
            "LoRA is not supported with FSDP1 (trainer=fsdp): its flat parameters would mix frozen and trained "
            "weights. Use trainer=ddp (the frozen model fits each GPU; trainer=auto's choice with LoRA), trainer=fsdp2 "
            "or trainer=gpu")
    model = meta_model(cfg)
    if model is not None:
        apply_lora(model, settings)  # ConfigError for a target the model lacks, the output head or a tied weight


def is_fsdp1(strategy) -> bool:
    """Whether ``trainer.strategy`` (a name or a ``_target_`` node) is Lightning's FSDPStrategy (FSDP1) or a subclass."""
    from lightning.pytorch.strategies import FSDPStrategy

    if strategy is None:
        return False
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    target = strategy.get("_target_") if OmegaConf.is_dict(strategy) else None
    if target is None:
        return False
    cls = locate("trainer.strategy._target_", str(target))
    return isinstance(cls, type) and issubclass(cls, FSDPStrategy)


def meta_model(cfg: DictConfig):
    """θ0's architecture on the meta device (no weights), when its config is available offline; else None.

    From a local directory or the HF cache (hub ids, not with ``trust_remote_code``), the toy world's cached θ0 or its
    ``model.build.architecture`` (the Qwen2 that :func:`tms.toy.world.init_model` builds)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    m = cfg.model
    config = None
    if m.get("name_or_path") and not m.get("trust_remote_code"):
        src = str(m.name_or_path)
        local = Path(os.path.expanduser(src))
        found = local / "config.json" if local.is_dir() else hub_cached(src, "config.json", m.get("revision"))
        if found is not None and Path(found).is_file():
            config = AutoConfig.from_pretrained(str(Path(found).parent))
    elif not m.get("name_or_path") and m.get("gguf") is None and m.get("build") is not None:
        stage = toy_base_stage(cfg)
        if stage.done:
            config = AutoConfig.from_pretrained(str(stage.dir / "model"))
        else:
            arch = OmegaConf.to_container(m.build.get("architecture") or {}, resolve=True)
            config = Qwen2Config(vocab_size=int(m.build.vocab_size), tie_word_embeddings=True, **arch)
    if config is None:
        return None
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as err:  # an architecture transformers cannot build here: checked at load
        log.info("validation: model.lora targets not checked before loading (%s)", err)
        return None


def check_toy_held_out(cfg: DictConfig) -> None:
    """The toy world: θ0 never pretrains on a prompt the pipeline tests, trains or validates on.

    θ0's pretraining skips the first ``model.build.held_out[skill]`` unique prompts of each skill's stream
    (:func:`tms.toy.world.pretraining_task`); a toy task with θ0's seed draws its test, val, then train
    prompts from the start of that same stream, so they must fit in that prefix: for the training task
    test + val + train, for every toy benchmark its test split (the only one evaluated).
    """
    if cfg.model.get("name_or_path") or cfg.model.get("gguf") is not None or cfg.model.get("build") is None:
        return
    import inspect

    build = cfg.model.build
    held, seed = {str(k): int(v) for k, v in (build.get("held_out") or {}).items()}, int(build.seed)
    nodes = [("data.task", cfg.data.task, ("n_test", "n_val", "n_train"))]
    for k, v in (cfg.eval.get("benchmarks") or {}).items():  # an lm_eval benchmark's toy task is its export node
        exported = v.get("export") if hasattr(v, "get") else None
        nodes.append((f"eval.benchmarks.{k}.export" if exported is not None else f"eval.benchmarks.{k}",
                      exported if exported is not None else v, ("n_test",)))
    pretrained = set(build.get("skills") or {}) | set(build.get("native") or {})
    for key, node, parts in nodes:
        if not str(node.get("_target_", "")).endswith("ToyTask") or int(node.get("seed", 0)) != seed:
            continue
        if node.get("skill") not in pretrained:
            continue
        defaults = inspect.signature(ToyTask).parameters  # the sizes a node leaves out
        need, skill = sum(int(node.get(p, defaults[p].default)) for p in parts), str(node.get("skill"))
        require(need <= held.get(skill, 0), key, f"its {' + '.join(parts)} = {need} prompts of skill {skill!r} exceed "
                f"model.build.held_out.{skill}={held.get(skill, 0)}, the prompts θ0's pretraining leaves out of that "
                f"skill's stream: θ0 would have seen some of them. Raise model.build.held_out.{skill} (rebuilds θ0) "
                "or use fewer prompts")


def check_cache_dir(cfg: DictConfig) -> None:
    """``cache_dir`` is (or can be created as) a writable directory (nothing is created here); ``cache_reuse``
    is a known mode."""
    path = Path(os.path.expanduser(str(cfg.cache_dir)))
    existing = next(p for p in (path, *path.parents) if p.exists())
    require(existing.is_dir(), "cache_dir",
            f"{existing} is not a directory; set cache_dir (or TMS_CACHE) to a directory")
    require(os.access(existing, os.W_OK | os.X_OK), "cache_dir",
            f"{existing} is not writable, so the stages cannot be stored; set cache_dir (or TMS_CACHE) elsewhere")

    reuse = cfg.get("cache_reuse", "strict")
    require(reuse in REUSE_MODES, "cache_reuse", f"must be one of {list(REUSE_MODES)}, got {reuse!r}")


def check_batch_sizes(cfg: DictConfig, n_train: int, world: int) -> None:
    """Per-device and effective batch sizes must fit in the training set (``data.task`` / ``data.train_limit``)."""
    bs = int(cfg.sft.batch_size)
    require(bs * world <= n_train, "sft.batch_size",
            f"{bs} per device x {world} device(s) is larger than the {n_train} training examples; lower sft.batch_size "
            "or use more data (data.task, data.train_limit)")
    eff = cfg.sft.get("effective_batch_size")
    if eff is not None:
        require(isinstance(eff, int) and not isinstance(eff, bool) and eff >= 1, "sft.effective_batch_size",
                f"must be an integer >= 1 or null, got {eff!r}")
        require(eff <= n_train, "sft.effective_batch_size",
                f"{eff} is larger than the {n_train} training examples: an optimiser step could never see a full "
                "batch; lower it or use more data")


def model_context(cfg: DictConfig) -> tuple[int | None, str]:
    """The model's context length and where it was read from (None when unknown without a download)."""
    m = cfg.model
    if m.get("name_or_path"):
        src = str(m.name_or_path)
        local = Path(os.path.expanduser(src))
        config = local / "config.json" if local.is_dir() else hub_cached(src, "config.json", m.get("revision"))
        if config is None or not Path(config).is_file():
            return None, src
        data = json.loads(Path(config).read_text())
        data = {**data.get("text_config", {}), **data}
        value = next((data[k] for k in CONTEXT_KEYS if isinstance(data.get(k), int)), None)
        return value, str(config)
    if m.get("build") is not None:
        arch = m.build.get("architecture") or {}
        if arch.get("max_position_embeddings") is not None:
            return int(arch.max_position_embeddings), "model.build.architecture.max_position_embeddings"
        from transformers import Qwen2Config

        return int(Qwen2Config().max_position_embeddings), "the Qwen2Config default"
    return None, "model.gguf"


def hub_cached(repo: str, filename: str, revision: str | None) -> str | None:
    """Path of ``filename`` of hub repo ``repo`` in the local HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename, revision=revision)
    except Exception:  # an invalid repo id: check_model_source reports it
        return None
    return found if isinstance(found, str) else None


def available_tokenizer(cfg: DictConfig):
    """θ0's tokenizer if it can be loaded without compute or download, else None."""

    m = cfg.model
    trust = bool(m.get("trust_remote_code", False))
    if m.get("name_or_path"):
        src = str(m.name_or_path)
        local = Path(os.path.expanduser(src)).is_dir()
        if not local and hub_cached(src, "tokenizer_config.json", m.get("revision")) is None:
            return None
        return load_tokenizer(src, trust_remote_code=trust, revision=m.get("revision"))
    if m.get("build") is not None:

        stage = toy_base_stage(cfg)
        return load_tokenizer(str(stage.dir / "model")) if stage.done else None
    return None


def toy_prompt_lengths(task: Task, examples: Sequence[Example]) -> list[int]:
    """Lower bounds of the toy tokenizer's prompt lengths, before θ0 (and its tokenizer) is built.

    The toy chat template adds one special token per message and one for the generation prompt, and
    byte-level BPE never merges across the pieces of Qwen2's pre-tokenizer (:mod:`tms.toy.tokenizer`), so
    every piece is at least one token. (The toy tokenizer learns every toy word: the bound is then exact.)
    """
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False)
    return [1 + sum(1 + len(split.pre_tokenize_str(m["content"])) for m in task.messages(e)) for e in examples]


def prompt_lengths(cfg: DictConfig, task: Task, examples: Sequence[Example]) -> tuple[list[int] | None, bool]:
    """The train prompts' token counts and whether they are exact (else lower bounds); None when unknown."""
    tok = available_tokenizer(cfg)
    if tok is not None:

        return [len(prompt_ids(tok, task.messages(e))) for e in examples], True
    if not cfg.model.get("name_or_path") and cfg.model.get("gguf") is None and cfg.model.get("build") is not None:
        return toy_prompt_lengths(task, examples), False
    return None, False


def generation_budgets(cfg: DictConfig) -> list[tuple[str, int, int | None]]:
    """``(key, max_new_tokens, prompts)`` of every generation from the train prompts: the harvest (its first
    ``prompts``, or all when None) and the RL rollouts."""
    out = []
    if uses_harvest(cfg) or cfg.harvest.get("checkpoints") is not None:  # python harvest.py harvest.checkpoints=[...]
        out.append(("harvest.max_new_tokens", int(cfg.harvest.max_new_tokens), cfg.harvest.get("prompt_subset")))
    if cfg.method.kind == "rl":
        out.append(("rl.max_new_tokens", int(cfg.rl.max_new_tokens), None))
    return out


def check_lengths(cfg: DictConfig, task: Task, train: Sequence[Example]) -> None:
    """``data.max_length`` within the context; prompts within ``data.max_length``; harvested (and RL) prompts
    plus their ``max_new_tokens`` within the context."""
    context, where = model_context(cfg)
    max_length = int(cfg.data.max_length)
    if context is not None:
        require(max_length <= context, "data.max_length",
                f"{max_length} is longer than the model's context of {context} tokens ({where}); lower data.max_length")
    lengths, exact = prompt_lengths(cfg, task, train)
    if lengths is None:
        log.info("validation: tokenizer not available without compute; prompt lengths are checked at training time")
        return
    least = "" if exact else "at least "
    require(min(lengths) < max_length, "data.max_length",
            f"{max_length} leaves no room for a completion: every train prompt of {task.name!r} fills it (the shortest "
            f"has {least}{min(lengths)} tokens); raise data.max_length")
    if context is None:
        return
    for key, new, subset in generation_budgets(cfg):
        harvested = lengths[: int(subset)] if subset else lengths
        i = max(range(len(harvested)), key=harvested.__getitem__)
        require(harvested[i] + new <= context, key,
                f"the prompt of train example {train[i].id!r} ({task.name}) has {least}{harvested[i]} tokens; with "
                f"{new} new tokens it exceeds the model's context of {context} ({where}). Lower {key}, or remove "
                "long prompts from the data (data.task, data.train_limit, harvest.prompt_subset)")


def uses_harvest(cfg: DictConfig) -> bool:
    """Whether the run generates from the train prompts (a student whose target source needs samples)."""
    if cfg.method.kind != "student":
        return False
    from hydra.utils import instantiate

    return bool(instantiate(cfg.data.target_source).required_checkpoints(int(cfg.sft.num_checkpoints)))


def check_no_secrets(cfg: DictConfig) -> None:
    """Reject credentials in the config: literal values anywhere, and any credential under ``logger``
    (its keys go to the logger's constructor and run config; W&B reads ``WANDB_API_KEY`` itself).
    Elsewhere an ``${oc.env:NAME}`` interpolation is accepted: it is redacted from everything we
    write (:mod:`tms.core.redact`)."""

    bad = [k for k, v in secret_items(OmegaConf.to_container(cfg, resolve=False))
           if k.startswith("logger.") or not (isinstance(v, str) and v.startswith("${"))]
    require(not bad, bad[0] if bad else "",
            "looks like a credential written into the config, which would be saved with the run or passed to the "
            "logger; remove it and set it in the environment instead (WANDB_API_KEY, HF_TOKEN)")
