"""The error types every layer raises (no imports: any module may use them)."""
from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""
