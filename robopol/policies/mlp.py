"""Deterministic action-chunk regressor: the mean-squared-error baseline for imitation.

It shares the interface of the generative heads — ``loss(batch)`` and ``sample(obs) -> (B, H, A)`` in
normalised action space — so trainers, evaluation and deployment treat every policy the same way. Being a
regressor it averages the modes of multimodal demonstrations, which the generative heads do not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robopol.nets.mlp import MLP


class MLPPolicy(nn.Module):
    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        obs_steps: int = 1,
        horizon: int = 8,
        action_steps: int = 4,
        hidden_dims: Sequence[int] = (256, 256),
        layer_norm: bool = False,
        residual: bool = False,
        name: str = "mlp",
    ) -> None:
        super().__init__()
        if not 1 <= action_steps <= horizon:
            raise ValueError(f"policy.action_steps must be in [1, horizon={horizon}], got {action_steps}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.obs_steps, self.horizon, self.action_steps = obs_steps, horizon, action_steps
        self.net = MLP(obs_steps * obs_dim, horizon * action_dim, hidden_dims, layer_norm, residual)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs`` (B, To, obs_dim) normalised -> action chunk (B, H, A) normalised."""
        return self.net(obs.flatten(1)).view(-1, self.horizon, self.action_dim)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error over the chunk, ignoring padded steps when ``action_is_pad`` is given."""
        error = (self(batch["obs"]) - batch["action"]).pow(2).mean(-1)
        keep = ~batch["action_is_pad"] if "action_is_pad" in batch else torch.ones_like(error, dtype=torch.bool)
        loss = (error * keep).sum() / keep.sum().clamp_min(1)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self(obs)
