"""Small transformer denoiser over a sequence, conditioned on observation tokens and a scalar level.

Shapes: ``x`` is ``(B, T, C)`` with ``T <= horizon``, ``level`` is ``(B,)``, ``cond`` is
``(B, cond_steps, cond_dim)`` (one token per observation step). The sequence tokens attend to each other
without a causal mask (the whole chunk is denoised jointly) and cross-attend to the condition tokens:
the level token followed by the observation tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from robopol.nets.embeddings import LevelEmbedding


class TransformerDenoiser(nn.Module):
    """Pre-LayerNorm transformer decoder: self-attention over the sequence, cross-attention to the condition
    tokens."""

    def __init__(
        self,
        input_dim: int,
        horizon: int,
        cond_dim: int,
        cond_steps: int = 1,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 4,
        dropout: float = 0.1,
        level_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.input_dim, self.horizon = input_dim, horizon
        self.cond_dim, self.cond_steps = cond_dim, cond_steps
        self.in_proj = nn.Linear(input_dim, d_model)
        self.pos = nn.Parameter(torch.randn(1, horizon, d_model) * 0.02)
        self.level_embed = LevelEmbedding(d_model, scale=level_scale)
        if cond_dim:
            self.cond_proj = nn.Linear(cond_dim, d_model)
            self.cond_pos = nn.Parameter(torch.randn(1, cond_steps, d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(d_model, n_heads, 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layers)
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, input_dim))

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        batch, length = x.shape[:2]
        if length > self.horizon:
            raise ValueError(f"sequence length {length} exceeds the transformer's horizon {self.horizon}")
        level_token = self.level_embed(level).expand(batch, -1).unsqueeze(1)
        memory = level_token
        if self.cond_dim:
            obs_tokens = self.cond_proj(cond.reshape(batch, self.cond_steps, self.cond_dim)) + self.cond_pos
            memory = torch.cat([level_token, obs_tokens], dim=1)
        # The level is also added to every sequence token, so each position sees it without attending.
        h = self.in_proj(x) + self.pos[:, :length] + level_token
        return self.out(self.decoder(h, memory))
