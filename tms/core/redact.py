"""Keep credentials out of everything we write (manifests, results, config dumps, logs).

Two rules, applied by :func:`redact` to any JSON-like object:

* a value under a key that names a credential (``api_key``, ``wandb_key``, ``token``, ``hf_token``,
  ``secret``, ``password``, ...; not ``tokens``, ``max_new_tokens``, ``pad_token`` or ``key``) is
  replaced by ``"<redacted>"``;
* any string containing the value of a credential environment variable (``WANDB_API_KEY``,
  ``HF_TOKEN``, ``*_SECRET``, ``*_PASSWORD``, ...; values of 8 characters or more) has it replaced,
  whatever its key (e.g. a config value interpolated from ``${oc.env:WANDB_API_KEY}``).

Secrets belong in the environment (W&B and Hugging Face read ``WANDB_API_KEY`` and ``HF_TOKEN``
themselves); :func:`secret_items` lets the validation reject them in configs.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Iterator

REDACTED = "<redacted>"

SECRET_KEY = re.compile(
    r"^(?:.*[_.-])?(?:api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|private[_-]?key|password|passwd"
    r"|credentials?|wandb[_-]?key)$"
    r"|^(?:hf|hub|huggingface|hugging_face_hub|auth|access|bearer|api|wandb|github|gh)?[_-]?token$",
    re.IGNORECASE,
)
SECRET_ENV = re.compile(r"(?:^|_)(?:API_KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)", re.IGNORECASE)
MIN_SECRET_LEN = 8


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a credential."""
    return isinstance(key, str) and bool(SECRET_KEY.match(key))


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the credential environment variables (longest first)."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_ENV.search(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, strings, numbers) without credentials (see the module docstring)."""
    values = env_secrets(environ)

    def walk(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else walk(v)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        if isinstance(x, str):
            for v in values:
                if v in x:
                    x = x.replace(v, REDACTED)
        return x

    return walk(obj)


def secret_items(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of the credential-named keys with a value in a nested mapping."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_key(k) and v not in (None, ""):
                yield path, v
            else:
                yield from secret_items(v, path)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from secret_items(v, f"{prefix}[{i}]")
