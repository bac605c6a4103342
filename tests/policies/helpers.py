"""Stand-in networks with known outputs, so head losses and samplers can be checked by hand."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class FakeNet(nn.Module):
    """``net(x, level, obs) = fn(x, level, obs)``; records every call's inputs."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, level: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), level.clone(), obs.clone()))
        return self.fn(x, level, obs)


class CountingNet(nn.Module):
    """Wraps a real backbone and counts its calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.levels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, level: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        self.levels.append(level.clone())
        return self.net(x, level, obs)
