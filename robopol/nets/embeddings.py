"""Embeddings of a scalar per sample (a noise level, a time, a step index) for conditioning networks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """``(B,)`` scalars -> ``(B, dim)`` features ``[sin(s x f_i), cos(s x f_i)]``.

    The frequencies ``f_i`` fall geometrically from 1 to ``1 / max_period``. ``scale`` stretches the input
    first, so that values in a small range (a time in [0, 1]) still spread over the fast frequencies the
    way integer step indices do.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be an even number >= 2, got {dim}")
        self.dim, self.scale = dim, scale
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        # Not persistent: derived from the constructor arguments, so it stays out of checkpoints.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (x.reshape(-1, 1).to(self.freqs.dtype) * self.scale) * self.freqs
        return torch.cat([args.sin(), args.cos()], dim=-1)


class InferenceCache:
    """Mixin for modules that embed a noise level: keeps their results at inference.

    With ``cache_inference`` on (``enable_level_cache``), CPU calls in eval mode without autograd keep their
    result: a sampler's levels come from a fixed schedule, so at inference the same few embeddings are asked
    for call after call, and at batch 1 the embedding MLP is a sizeable part of each network call. An entry
    is reused only while every weight's version counter is unchanged, so an optimiser step, an EMA update or
    ``load_state_dict`` recomputes it (fused optimisers do not advance the counters; ``enable_level_cache``,
    which every ``ChunkActor`` calls, also empties the cache). The weights are listed once, when the cache is
    switched on (walking ``parameters()`` on every call cost about 45 us, a tenth of a one-step policy's
    call), so switch it on again after replacing parameter tensors (``load_state_dict(assign=True)``).
    """

    CACHE_ENTRIES = 256
    """Distinct level tensors kept; the cache starts over when full (a schedule needs a few dozen)."""

    cache_inference = False
    _cache: dict[tuple, tuple[tuple[int, ...], torch.Tensor]]
    _weights: list[torch.Tensor]

    def cached(self, level: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``compute(level)``, from the cache when it is on and holds the entry for these weights."""
        if (not self.cache_inference or self.training or torch.is_grad_enabled()
                or level.device.type != "cpu"):
            return compute(level)
        versions = tuple(w._version for w in self._weights)
        key = (level.dtype, tuple(level.shape), tuple(level.detach().flatten().tolist()))
        hit = self._cache.get(key)
        if hit is not None and hit[0] == versions:
            return hit[1]
        out = compute(level)
        if len(self._cache) >= self.CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (versions, out)
        return out


class LevelEmbedding(InferenceCache, nn.Sequential):
    """Sinusoidal features of a scalar followed by a small MLP (``dim -> 4 dim -> dim``, Mish); cached at
    inference (:class:`InferenceCache`)."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__(
            SinusoidalEmbedding(dim, scale=scale),
            nn.Linear(dim, 4 * dim),
            nn.Mish(),
            nn.Linear(4 * dim, dim),
        )
        self.dim = dim

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return self.cached(level, super().forward)


def enable_level_cache(module: nn.Module, enabled: bool = True) -> None:
    """Switch the inference cache of every :class:`InferenceCache` module inside ``module`` on or off."""
    for m in module.modules():
        if isinstance(m, InferenceCache):
            m.cache_inference = enabled
            m._cache = {}
            m._weights = list(m.parameters())
