"""Diagonal Gaussian policy over single actions: the policy of Gaussian PPO, the on-policy reference point.

It shares the interface the runtime needs from every head (``obs_steps``, ``horizon``, ``action_steps``,
``sample(obs) -> (B, H, A)`` in normalised action space), with ``horizon = action_steps = 1``, so evaluation
and deployment run it like any chunk policy. ``sample`` returns the mean (the deterministic policy that is
evaluated); ``distribution`` is what PPO samples from and scores.

The mean is an MLP with tanh activations and orthogonal initialisation (gain sqrt(2) in hidden layers, 0.01
in the output layer, so every action starts near the centre of its range), and the log standard deviation
is one learned vector independent of the observation, the parameterisation of cleanrl's and rsl_rl's
continuous-control PPO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Normal


def tanh_mlp(in_dim: int, out_dim: int, hidden_dims: Sequence[int], out_gain: float) -> nn.Sequential:
    """``in -> hidden... -> out`` with tanh activations, orthogonal weights and zero biases."""
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_dims:
        layers += [_orthogonal(nn.Linear(width, hidden), math.sqrt(2)), nn.Tanh()]
        width = hidden
    layers.append(_orthogonal(nn.Linear(width, out_dim), out_gain))
    return nn.Sequential(*layers)


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class GaussianPolicy(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, obs_steps: int = 1, horizon: int = 1,
                 action_steps: int = 1, hidden_dims: Sequence[int] = (64, 64), init_log_std: float = 0.0,
                 name: str = "gaussian") -> None:
        super().__init__()
        if obs_steps != 1 or horizon != 1 or action_steps != 1:
            raise ValueError(f"the Gaussian policy acts on one observation and one action: policy.obs_steps, "
                             f"policy.horizon and policy.action_steps must be 1, got {obs_steps}, {horizon}, "
                             f"{action_steps}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.obs_steps, self.horizon, self.action_steps = 1, 1, 1
        self.net = tanh_mlp(obs_dim, action_dim, hidden_dims, out_gain=0.01)
        """The mean of the action distribution."""
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def distribution(self, obs: torch.Tensor) -> Normal:
        """``obs`` (B, obs_dim) normalised -> independent Normals over the (B, action_dim) normalised action."""
        mean = self.net(obs)
        return Normal(mean, self.log_std.exp().expand_as(mean))

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``obs`` (B, 1, obs_dim) -> the mean action as a one-step chunk (B, 1, action_dim)."""
        return self.net(obs.flatten(1)).unsqueeze(1)
