"""Errors that robopol raises for bad user input.

Every message names the offending file, key or value and says what to do about it. The CLI prints
``RobopolError`` messages as one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class RobopolError(Exception):
    """Base class for user-facing errors; ``str(err)`` is the whole message."""


class ConfigError(RobopolError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class StoreError(RobopolError):
    """An episode store is missing, malformed or inconsistent."""


class CheckpointError(RobopolError):
    """A checkpoint is missing, truncated, from a newer format or does not match the model."""


class MissingExtraError(RobopolError, ImportError):
    """An optional dependency group (pip extra) is not installed."""


class DivergedError(RobopolError, FloatingPointError):
    """Training produced a non-finite loss; the message names the algorithm, the iteration and what to lower."""


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an error that names the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the '{module}' package from the '{extra}' extra: "
            f"pip install 'robopol[{extra}]' ({exc})"
        ) from exc
