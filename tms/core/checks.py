"""The check primitives every config check is written with; each failure is a :class:`ConfigError` naming its key.

Pure functions of a value and its key (``require``, ``integer``, ``number``, ``known_keys``) and of a Hydra node
(``build``: instantiate it, ``check_target``: import its ``_target_`` and bind its arguments without building it).
The checks of each config group are in :mod:`tms.config`; component layers (e.g. the RL method's
:func:`tms.methods.rl_config.validate_rl`) use these too, so they sit at the bottom of the package.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig

from tms.core.errors import ConfigError


def require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def build(node: DictConfig, key: str):
    """``instantiate(node)``, turning a constructor's or an import's error into a ConfigError naming ``key``."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ or err
        msg = str(cause)
        raise ConfigError(msg if key in msg else f"{key}: {msg}") from err


def integer(key: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """``value`` is an integer >= ``minimum`` (or null, when ``optional``)."""
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, key, f"must be {'null or ' if optional else ''}an integer >= {minimum}, got {value!r}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(key: str, value: Any, low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False, optional: bool = False) -> None:
    """``value`` is a finite number in the interval from ``low`` to ``high`` (open or closed ends)."""
    if optional and value is None:
        return
    ok = is_number(value) and (low is None or (value > low if open_low else value >= low)) and (
        high is None or (value < high if open_high else value <= high))
    if high is None:
        where = f"{'>' if open_low else '>='} {low}" if low is not None else ""
    else:
        where = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    require(ok, key, f"must be {'null or ' if optional else ''}a finite number {where}, got {value!r}")


def known_keys(node: DictConfig, prefix: str, known: Sequence[str]) -> None:
    """Refuse keys of ``node`` nothing reads (a typo would otherwise be ignored silently)."""
    unknown = [k for k in node if k not in known]
    require(not unknown, f"{prefix}.{unknown[0]}" if unknown else prefix,
            f"unknown key (nothing reads it); the keys of {prefix} are {sorted(known)}. Fix its spelling or remove it")


def locate(key: str, path: str):
    """The object a ``_target_`` names, or a ConfigError naming ``key``."""
    from hydra._internal.utils import _locate

    try:
        return _locate(str(path))
    except Exception as err:
        raise ConfigError(f"{key}: cannot import {path!r} ({err})") from err


def check_target(node: DictConfig | None, key: str) -> None:
    """A Hydra node whose ``_target_`` imports and takes the node's arguments, checked without building it (a logger
    would start a run, a reward may load a judge model); nested nodes are not checked."""
    import inspect

    require(node is not None and "_target_" in node, key, "must be a Hydra node with a _target_")
    target = locate(f"{key}._target_", node._target_)
    kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
    try:
        inspect.signature(target).bind_partial(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{key}: {node._target_} does not take these arguments ({err}); fix or remove them") from err
    except ValueError:  # no signature to inspect: building it checks the arguments
        pass


def optimizer_steps(n_examples: int, batch_size: int, world: int, accumulate: int, epochs: int, max_steps: int) -> int:
    """Optimiser steps of a run: ⌈⌈n / world⌉ / batch⌉ micro-batches per epoch, ⌈· / accumulate⌉ steps per epoch."""
    per_epoch = math.ceil(math.ceil(math.ceil(n_examples / world) / batch_size) / accumulate)
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps and max_steps > 0 else total
