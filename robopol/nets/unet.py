"""Temporal 1-D U-Net over a sequence, conditioned through FiLM on a global vector and a scalar level.

Shapes: ``x`` is ``(B, T, C)`` (batch, time, channels), ``level`` is ``(B,)`` (a noise level or time, fed to a
sinusoidal embedding) and ``cond`` is ``(B, cond_dim)``. The global condition ``cond ⊕ embed(level)`` sets a
per-channel scale and bias in every residual block. ``len(down_dims)`` levels halve the time axis
``len(down_dims) - 1`` times, so ``T`` must be divisible by ``2 ** (len(down_dims) - 1)``: with
``down_dims=(64, 128, 256)`` valid lengths are 4, 8, 12, 16, ...; with one level any length works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robopol.nets.embeddings import LevelEmbedding


class ConvBlock(nn.Sequential):
    """Conv1d (length preserving) -> GroupNorm -> Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    """Two conv blocks with a FiLM modulation ``h * (1 + scale) + bias`` between them, plus a skip path.

    The ``1 +`` keeps a freshly initialised block close to unmodulated, whatever the condition's scale.
    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = ConvBlock(in_ch, out_ch, kernel_size, n_groups)
        self.block2 = ConvBlock(out_ch, out_ch, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block1(x) * (1 + scale) + bias
        return self.block2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """U-Net over time: two FiLM residual blocks per level, strided-conv down / transposed-conv up, skips.

    Every encoder level's output is concatenated into the decoder level of the same resolution.
    """

    def __init__(
        self,
        input_dim: int,
        cond_dim: int,
        level_dim: int = 128,
        level_scale: float = 1.0,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        dims = list(down_dims)
        if not dims:
            raise ValueError("down_dims must name at least one level width")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so convolutions keep the length, got {kernel_size}")
        bad = [d for d in dims if d % n_groups]
        if bad:
            raise ValueError(f"down_dims {bad} are not divisible by n_groups={n_groups} (GroupNorm)")
        self.input_dim, self.cond_dim = input_dim, cond_dim
        self.length_multiple = 2 ** (len(dims) - 1)
        self.level_embed = LevelEmbedding(level_dim, scale=level_scale)
        film_dim = cond_dim + level_dim

        def res(i: int, o: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(i, o, film_dim, kernel_size, n_groups)

        self.encoder = nn.ModuleList()
        width = input_dim
        for d in dims:
            self.encoder.append(nn.ModuleList([res(width, d), res(d, d)]))
            width = d
        self.downs = nn.ModuleList(nn.Conv1d(d, d, 3, stride=2, padding=1) for d in dims[:-1])
        self.mid = nn.ModuleList([res(dims[-1], dims[-1]), res(dims[-1], dims[-1])])
        # decoder[i] works at encoder level i's resolution; ups[i-1] takes level i up to level i-1.
        self.decoder = nn.ModuleList(nn.ModuleList([res(2 * d, d), res(d, d)]) for d in dims)
        self.ups = nn.ModuleList(nn.ConvTranspose1d(dims[i], dims[i - 1], 4, stride=2, padding=1)
                                 for i in range(1, len(dims)))
        self.head = nn.Sequential(ConvBlock(dims[0], dims[0], kernel_size, n_groups),
                                  nn.Conv1d(dims[0], input_dim, 1))

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1] % self.length_multiple:
            raise ValueError(f"sequence length {x.shape[1]} is not divisible by {self.length_multiple} "
                             f"(2 ** (len(down_dims) - 1)), which this U-Net needs")
        film = self.level_embed(level).expand(x.shape[0], -1)
        if self.cond_dim:
            film = torch.cat([cond.reshape(x.shape[0], -1), film], dim=-1)
        h = x.transpose(1, 2)  # convolve over time: (B, C, T)
        skips = []
        for i, (b1, b2) in enumerate(self.encoder):
            h = b2(b1(h, film), film)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        for block in self.mid:
            h = block(h, film)
        for i in reversed(range(len(self.decoder))):
            b1, b2 = self.decoder[i]
            h = b2(b1(torch.cat([h, skips[i]], dim=1), film), film)
            if i > 0:
                h = self.ups[i - 1](h)
        return self.head(h).transpose(1, 2)
