"""Multi-layer perceptron with optional LayerNorm and residual connections."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """``in_dim -> hidden_dims... -> out_dim`` with Mish activations.

    ``layer_norm`` normalises each hidden layer (stabilises critics and large learning rates);
    ``residual`` adds a skip connection around hidden layers whose input and output widths agree.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        layer_norm: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.hidden = nn.ModuleList()
        width = in_dim
        for hidden in hidden_dims:
            layers: list[nn.Module] = [nn.Linear(width, hidden)]
            if layer_norm:
                layers.append(nn.LayerNorm(hidden))
            layers.append(nn.Mish())
            self.hidden.append(nn.Sequential(*layers))
            width = hidden
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            y = layer(x)
            x = x + y if self.residual and y.shape == x.shape else y
        return self.out(x)
