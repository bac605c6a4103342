"""Embeddings of a scalar per sample (a noise level, a time, a step index) for conditioning networks."""

from __future__ import annotations

import math

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


class LevelEmbedding(nn.Sequential):
    """Sinusoidal features of a scalar followed by a small MLP (``dim -> 4 dim -> dim``, Mish)."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__(
            SinusoidalEmbedding(dim, scale=scale),
            nn.Linear(dim, 4 * dim),
            nn.Mish(),
            nn.Linear(4 * dim, dim),
        )
        self.dim = dim
