"""Load causal LMs and tokenizers: one code path for hub ids and local directories.

``load_tokenizer`` / ``load_model`` take the same ``name_or_path`` whether it is
``Qwen/Qwen2.5-3B-Instruct`` or a directory written by ``save_pretrained`` (our toy θ0, an SFT
checkpoint, a converted GGUF model), so every stage loads every model the same way.
Safe defaults: ``trust_remote_code`` is off unless the config turns it on, and weights are
saved as safetensors.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"auto"``/None -> bf16 on a CUDA device with bf16, else fp32."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"model.dtype: unknown dtype {name!r}; expected one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[name]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(name_or_path: str, key: str = "model.name_or_path") -> None:
    """Fail early with a message naming ``key`` when a local path does not exist or is not an HF model.

    Anything that is not an existing path must look like a hub id (``org/name``).
    """
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FileNotFoundError(f"{key}={name_or_path!r} is not a saved HF model directory (no config.json)")
        return
    if not _HUB_ID.match(str(name_or_path)) or str(name_or_path).startswith("."):
        raise FileNotFoundError(f"{key}={name_or_path!r}: no such directory, and it is not a hub id like 'org/name'")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None,
                   padding_side: str = "left"):
    """A tokenizer with a pad token and left padding (for batched generation).

    Models without a pad token (Llama 3) get ``pad = eos``; labels are masked from the attention
    mask, never from the pad id, so this is safe for training.
    """
    from transformers import AutoTokenizer

    check_model_source(name_or_path)
    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision,
                                        padding_side=padding_side)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer of {name_or_path!r} has no eos token; generation could never stop")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None) is None:
        raise ValueError(f"tokenizer of {name_or_path!r} has no chat template; use an instruct model or add one")
    return tok


def load_model(name_or_path: str, dtype: str | torch.dtype | None = "auto", attn_implementation: str | None = None,
               trust_remote_code: bool = False, revision: str | None = None, **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` with our dtype/attention conventions."""
    from transformers import AutoModelForCausalLM

    check_model_source(name_or_path)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, revision=revision,
        **extra, **kwargs,
    )
    return model


def save_pretrained(model, tokenizer, out_dir: str | Path) -> None:
    """Save an HF directory (config.json, model.safetensors, tokenizer files, generation config)."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def decoder_layer_classes(model) -> set[type]:
    """The transformer block classes of ``model`` (from ``_no_split_modules``), for FSDP wrapping."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"could not find the decoder layer class of {type(model).__name__} (no _no_split_modules)")
    return found
