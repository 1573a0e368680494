"""Checks of the inputs against each other, run by :func:`tms.validation.validate` before any compute.

* batch sizes against the number of training examples;
* ``data.max_length`` and the prompts (+ the tokens to generate) against the model's context
  (``max_position_embeddings``), and the prompts against ``data.max_length``;
* credentials written literally into the config (they would end up in ``config.resolved.yaml``).

The model's context and tokenizer are read without compute or network: from the local model
directory, the Hugging Face cache, the toy world's ``model.build`` or its cached θ0 stage. When
they are not available (a hub model not downloaded yet, a toy θ0 not built yet) the length checks
that need them are skipped; the data module still drops over-long prompts with a warning.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from tms.data.tasks.base import Example, Task
from tms.validation import require

log = logging.getLogger(__name__)

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


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
    from tms.models import load_tokenizer

    m = cfg.model
    trust = bool(m.get("trust_remote_code", False))
    if m.get("name_or_path"):
        src = str(m.name_or_path)
        local = Path(os.path.expanduser(src)).is_dir()
        if not local and hub_cached(src, "tokenizer_config.json", m.get("revision")) is None:
            return None
        return load_tokenizer(src, trust_remote_code=trust, revision=m.get("revision"))
    if m.get("build") is not None:
        from tms.pipeline import toy_base_stage

        stage = toy_base_stage(cfg)
        return load_tokenizer(str(stage.dir / "model")) if stage.done else None
    return None


def check_lengths(cfg: DictConfig, task: Task, train: Sequence[Example]) -> None:
    """``data.max_length`` within the context; prompts within ``data.max_length``; harvest prompts plus
    ``harvest.max_new_tokens`` within the context."""
    context, where = model_context(cfg)
    max_length = int(cfg.data.max_length)
    if context is not None:
        require(max_length <= context, "data.max_length",
                f"{max_length} is longer than the model's context of {context} tokens ({where}); lower data.max_length")
    tok = available_tokenizer(cfg)
    if tok is None:
        log.info("validation: tokenizer not available without compute; prompt lengths are checked at training time")
        return
    from tms.data.formatting import prompt_ids

    lengths = [len(prompt_ids(tok, task.messages(e))) for e in train]
    require(min(lengths) < max_length, "data.max_length",
            f"every train prompt of {task.name!r} is at least {max_length} tokens long (shortest {min(lengths)}): "
            "nothing would be left for the completion; raise data.max_length")
    if context is None or not uses_harvest(cfg):
        return
    subset = cfg.harvest.get("prompt_subset")
    harvested = lengths[: int(subset)] if subset else lengths
    new = int(cfg.harvest.max_new_tokens)
    i = max(range(len(harvested)), key=harvested.__getitem__)
    require(harvested[i] + new <= context, "harvest.max_new_tokens",
            f"the prompt of train example {train[i].id!r} ({task.name}) has {harvested[i]} tokens; with {new} new "
            f"tokens it exceeds the model's context of {context} ({where}). Lower harvest.max_new_tokens, or remove "
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
    write (:mod:`tms.redact`)."""
    from tms.redact import secret_items

    bad = [k for k, v in secret_items(OmegaConf.to_container(cfg, resolve=False))
           if k.startswith("logger.") or not (isinstance(v, str) and v.startswith("${"))]
    require(not bad, bad[0] if bad else "",
            "looks like a credential written into the config, which would be saved with the run or passed to the "
            "logger; remove it and set it in the environment instead (WANDB_API_KEY, HF_TOKEN)")
