"""Ensembles of critics over action chunks, value nets, and Polyak target updates.

One :class:`EnsembleMLP` holds ``E`` independent MLPs as stacked weights, so the whole ensemble is one
batched matmul per layer instead of ``E`` separate calls. :class:`CriticEnsemble` feeds it the flattened
observation history and a flattened chunk of ``horizon`` actions: ``Q(s, a_{t:t+h})``; a shorter
``horizon`` gives DQC's partial-chunk critic ``Q^P(s, a_{t:t+h_a})`` and ``horizon=0`` a value net
``V(s)``. With ``logits=True`` the outputs are logits of values in [0, 1] (success-probability critics
trained with binary cross-entropy); :meth:`CriticEnsemble.values` maps them through a sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied to ``(E, B, in)`` inputs (nn.Linear's initialisation each)."""

    def __init__(self, num: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """``E`` MLPs ``in_dim -> hidden_dims... -> 1`` with GELU and optional per-member LayerNorm (the critic
    recipe of FQL, QC and DQC). Input ``(B, in)`` (shared by all members) or ``(E, B, in)``; output ``(E, B)``."""

    def __init__(self, in_dim: int, num: int = 2, hidden_dims: Sequence[int] = (512, 512, 512, 512),
                 layer_norm: bool = True) -> None:
        super().__init__()
        if num < 1:
            raise ValueError(f"an ensemble needs at least one member, got num_critics={num}")
        self.num = num
        widths = [in_dim, *hidden_dims]
        self.layers = nn.ModuleList(EnsembleLinear(num, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.norm_weight = nn.ParameterList(nn.Parameter(torch.ones(num, 1, w)) for w in hidden_dims)
        self.norm_bias = nn.ParameterList(nn.Parameter(torch.zeros(num, 1, w)) for w in hidden_dims)
        self.layer_norm = layer_norm
        self.out = EnsembleLinear(num, widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num, -1, -1)
        for layer, weight, bias in zip(self.layers, self.norm_weight, self.norm_bias, strict=True):
            x = layer(x)
            if self.layer_norm:
                x = F.layer_norm(x, x.shape[-1:]) * weight + bias
            x = F.gelu(x)
        return self.out(x).squeeze(-1)


class CriticEnsemble(nn.Module):
    """``Q_i(s, a_{t:t+h})`` for ``i < num_critics``; ``horizon=0`` makes it a value net ``V_i(s)``."""

    def __init__(self, obs_dim: int, obs_steps: int, action_dim: int, horizon: int, num_critics: int = 2,
                 hidden_dims: Sequence[int] = (512, 512, 512, 512), layer_norm: bool = True,
                 logits: bool = False) -> None:
        super().__init__()
        self.obs_dim, self.obs_steps, self.action_dim, self.horizon = obs_dim, obs_steps, action_dim, horizon
        self.logits = logits
        self.net = EnsembleMLP(obs_steps * obs_dim + horizon * action_dim, num_critics, hidden_dims, layer_norm)

    @property
    def num(self) -> int:
        return self.net.num

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor | None = None) -> torch.Tensor:
        """``obs`` (B, To, D) and ``chunk`` (B, h, A) (only the first ``horizon`` steps are read; None for
        a value net) -> raw outputs (E, B): values, or logits when ``logits``."""
        if obs.shape[1:] != (self.obs_steps, self.obs_dim):
            raise ValueError(f"critic obs must have shape (B, {self.obs_steps}, {self.obs_dim}), got "
                             f"{tuple(obs.shape)}")
        parts = [obs.flatten(1)]
        if self.horizon:
            if (chunk is None or chunk.dim() != 3 or chunk.shape[0] != obs.shape[0] or chunk.shape[1] < self.horizon
                    or chunk.shape[2] != self.action_dim):
                raise ValueError(f"critic over {self.horizon}-step chunks of {self.action_dim}-d actions needs a "
                                 f"chunk of shape ({obs.shape[0]}, >={self.horizon}, {self.action_dim}), got "
                                 f"{None if chunk is None else tuple(chunk.shape)}")
            parts.append(chunk[:, :self.horizon].flatten(1))
        return self.net(torch.cat(parts, dim=-1))

    def values(self, obs: torch.Tensor, chunk: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs as values (E, B): the sigmoid of the logits for a logit critic."""
        out = self(obs, chunk)
        return torch.sigmoid(out) if self.logits else out


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau source`` for every parameter (soft target update)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)
