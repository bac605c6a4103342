"""Per-key affine normalizers, fitted once on the training data and stored next to the weights.

Every mode is the affine map ``y = (x - center) * scale`` per feature dimension (the feature shape is the
per-step shape, ``data[key].shape[1:]``). Subtracting the centre first keeps float32 inputs far from zero
(e.g. positions in mm) precise, which ``x * scale + offset`` would not.

- ``minmax``: data min/max -> [-1, 1] (center = midpoint);
- ``meanstd``: zero mean, unit standard deviation (center = mean);
- ``quantile``: the 1st/99th percentiles -> [-1, 1]; values beyond them map outside [-1, 1] (no clipping);
- ``identity``: unchanged.

A dimension whose range (minmax, quantile) or std (meanstd) is below ``eps`` is only centred
(``scale = 1``): dividing by a near-zero spread would blow up noise, and with ``scale = 1`` the inverse is
exact. ``bounds(key)`` gives the normalised image of the fitted data's min/max, i.e. [-1, 1] for minmax, so
policies clip in normalised space to the data support.

The stats are float64; inputs keep their dtype and device (integer inputs become float32). torch is
imported only when a tensor is passed or the torch state is asked for, so robot-side processes can
normalise numpy arrays without torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robopol.errors import CheckpointError, ConfigError, StoreError

MODES = ("minmax", "meanstd", "quantile", "identity")
# Tensors saved per key: the affine map, then the input stats (kept so a checkpoint shows what it saw).
_TENSORS = ("scale", "center", "min", "max", "mean", "std", "q01", "q99")


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class Normalizer:
    """Per-key affine normalisation of numpy arrays and torch tensors (see the module docstring)."""

    def __init__(self, modes: Mapping[str, str], stats: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Build from per-key ``modes`` and ``stats`` (``stats[key][name]`` for every name in ``_TENSORS``).

        Use :meth:`fit` or :meth:`from_state` rather than calling this directly.
        """
        self._modes = dict(modes)
        self._stats = {
            k: {n: np.asarray(v, dtype=np.float64) for n, v in s.items()} for k, s in stats.items()
        }
        self._cache: dict[tuple[str, Any, Any], tuple[Any, Any]] = {}

    @classmethod
    def fit(cls, data: Mapping[str, Any], modes: Mapping[str, str], eps: float = 1e-6) -> Normalizer:
        """Fit one normaliser per key of ``modes`` on ``data[key]`` (steps on axis 0)."""
        stats: dict[str, dict[str, np.ndarray]] = {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ConfigError(f"normalizer mode '{mode}' for key '{key}' is unknown; use one of {MODES}")
            if key not in data:
                raise StoreError(
                    f"cannot fit a normalizer for key '{key}': the data has no such key (keys: {sorted(data)})"
                )
            x = np.asarray(data[key], dtype=np.float64)
            if x.ndim == 0 or x.shape[0] == 0:
                raise StoreError(
                    f"cannot fit a normalizer for key '{key}': it has no steps (shape {x.shape})"
                )
            if not np.isfinite(x).all():
                bad = int((~np.isfinite(x)).sum())
                raise StoreError(
                    f"data['{key}'] holds {bad} NaN/inf value(s); clean the store before fitting the normalizer"
                )
            stats[key] = _fit_stats(x, mode, eps)
        return cls(modes, stats)

    @property
    def keys(self) -> list[str]:
        """Keys this normalizer has stats for."""
        return list(self._modes)

    def mode(self, key: str) -> str:
        """The mode of ``key``."""
        self._check_key(key)
        return self._modes[key]

    def shape(self, key: str) -> tuple[int, ...]:
        """The per-step feature shape ``key`` was fitted on."""
        self._check_key(key)
        return tuple(self._stats[key]["scale"].shape)

    def normalize(self, key: str, x: Any) -> Any:
        """``(x - center) * scale`` for ``x`` of shape ``(..., *shape(key))``, numpy or torch."""
        x, scale, center = self._affine(key, x)
        return (x - center) * scale

    def unnormalize(self, key: str, y: Any) -> Any:
        """Inverse of :meth:`normalize`: ``y / scale + center``."""
        y, scale, center = self._affine(key, y)
        return y / scale + center

    def bounds(self, key: str, like: Any = None) -> tuple[Any, Any]:
        """Normalised-space (low, high) of the fitted data, per dimension: clip policy outputs to these.

        Numpy float64 arrays, or tensors on ``like``'s device and dtype when ``like`` is a tensor.
        """
        self._check_key(key)
        s = self._stats[key]
        low, high = (s["min"] - s["center"]) * s["scale"], (s["max"] - s["center"]) * s["scale"]
        if _is_tensor(like):
            import torch

            return torch.as_tensor(low, dtype=like.dtype, device=like.device), torch.as_tensor(
                high, dtype=like.dtype, device=like.device
            )
        return low, high

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """Copies of the fitted stats of ``key`` (scale, center, min, max, mean, std, q01, q99)."""
        self._check_key(key)
        return {n: v.copy() for n, v in self._stats[key].items()}

    def spec(self) -> dict[str, dict[str, Any]]:
        """JSON-able description: key -> {"mode": ..., "shape": [...]}; store it with :meth:`state_dict`."""
        return {k: {"mode": m, "shape": list(self._stats[k]["scale"].shape)} for k, m in self._modes.items()}

    def state_dict(self) -> dict[str, Any]:
        """Flat float64 tensors named ``"<key>.<stat>"`` (e.g. ``"action.scale"``), safetensors-ready."""
        import torch

        return {
            f"{k}.{n}": torch.from_numpy(np.ascontiguousarray(v)).clone()
            for k, s in self._stats.items()
            for n, v in s.items()
        }

    @classmethod
    def from_state(cls, spec: Mapping[str, Mapping[str, Any]], tensors: Mapping[str, Any]) -> Normalizer:
        """Rebuild from :meth:`spec` and :meth:`state_dict`; raises CheckpointError on any mismatch."""
        problems: list[str] = []
        stats: dict[str, dict[str, np.ndarray]] = {}
        modes: dict[str, str] = {}
        for key, entry in spec.items():
            mode = entry.get("mode") if isinstance(entry, Mapping) else None
            if mode not in MODES:
                problems.append(f"key '{key}' has unknown mode {mode!r} (known: {', '.join(MODES)})")
                continue
            shape = tuple(int(d) for d in entry.get("shape", ()))
            modes[key] = mode
            stats[key] = {}
            for name in _TENSORS:
                tname = f"{key}.{name}"
                if tname not in tensors:
                    problems.append(f"tensor '{tname}' is missing")
                    continue
                value = np.asarray(_to_numpy(tensors[tname]), dtype=np.float64)
                if value.shape != shape:
                    problems.append(f"tensor '{tname}' has shape {value.shape}, spec says {shape}")
                stats[key][name] = value
        expected = {f"{k}.{n}" for k in spec for n in _TENSORS}
        extra = sorted(set(tensors) - expected)
        if extra:
            problems.append(f"tensor(s) {extra} belong to no key of the spec")
        if problems:
            raise CheckpointError(
                "normalizer state does not match its spec: "
                + "; ".join(problems)
                + ". The checkpoint is damaged or was written by another version; refit the normalizer"
            )
        return cls(modes, stats)

    def check_matches(self, data_spec: Mapping[str, Sequence[int]]) -> None:
        """Raise CheckpointError unless ``data_spec`` (key -> per-step shape) has exactly our keys and shapes."""
        problems = []
        for key in data_spec:
            if key not in self._modes:
                problems.append(f"key '{key}' is in the data but the normalizer has no stats for it")
        for key in self._modes:
            if key not in data_spec:
                problems.append(f"key '{key}' has normalizer stats but is not in the data")
            elif tuple(data_spec[key]) != self.shape(key):
                problems.append(
                    f"key '{key}' has shape {tuple(data_spec[key])} in the data but {self.shape(key)} in the "
                    "normalizer"
                )
        if problems:
            raise CheckpointError(
                "normalizer does not match the data: "
                + "; ".join(problems)
                + ". Use the checkpoint with the store it was trained on, or refit the normalizer"
            )

    def _check_key(self, key: str) -> None:
        if key not in self._modes:
            raise StoreError(
                f"normalizer has no stats for key '{key}' (keys: {sorted(self._modes)}); fit it with this key"
            )

    def _affine(self, key: str, x: Any) -> tuple[Any, Any, Any]:
        """``x`` (integers cast to float32), scale and center in its dtype and on its device (cached)."""
        shape = self.shape(key)
        tensor = _is_tensor(x)
        if not tensor:
            x = np.asarray(x)
        if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape) :]) != shape:
            raise StoreError(
                f"normalizer for '{key}' expects arrays of shape (..., {', '.join(map(str, shape))}), got "
                f"{tuple(x.shape)}"
            )
        s = self._stats[key]
        if tensor:
            import torch

            if not x.is_floating_point():
                x = x.to(torch.float32)
            cache_key = (key, x.dtype, x.device)
            if cache_key not in self._cache:
                self._cache[cache_key] = tuple(
                    torch.as_tensor(s[n], dtype=x.dtype, device=x.device) for n in ("scale", "center")
                )
        else:
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            cache_key = (key, x.dtype, None)
            if cache_key not in self._cache:
                self._cache[cache_key] = (s["scale"].astype(x.dtype), s["center"].astype(x.dtype))
        scale, center = self._cache[cache_key]
        return x, scale, center


def _to_numpy(value: Any) -> np.ndarray:
    if _is_tensor(value):
        return value.detach().cpu().double().numpy()
    return np.asarray(value)


def _fit_stats(x: np.ndarray, mode: str, eps: float) -> dict[str, np.ndarray]:
    """Stats over axis 0 and the affine map of ``mode``; spreads below ``eps`` are only centred."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    mean, std = x.mean(axis=0), x.std(axis=0)
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    if mode == "identity":
        center, spread = np.zeros_like(lo), np.full_like(lo, 2.0)  # scale 2/2 = 1
    elif mode == "meanstd":
        center, spread = mean, 2.0 * std  # scale 2/(2 std) = 1/std
    else:
        a, b = (lo, hi) if mode == "minmax" else (q01, q99)
        center, spread = (a + b) / 2.0, b - a  # [a, b] -> [-1, 1]
    flat = spread < (2.0 * eps if mode == "meanstd" else eps)
    scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, spread))
    return {
        "scale": scale,
        "center": center,
        "min": lo,
        "max": hi,
        "mean": mean,
        "std": std,
        "q01": q01,
        "q99": q99,
    }
