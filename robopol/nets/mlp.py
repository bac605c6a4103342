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

    def forward_from_first(self, h: torch.Tensor) -> torch.Tensor:
        """``forward`` continued from the first hidden layer's linear output ``h = W x + b``, for callers that
        compute it in parts (a share of the input fixed over many calls). Not for a skip connection around
        the first layer, which needs the input itself."""
        first, *rest = self.hidden
        if self.residual and first[0].in_features == first[0].out_features:
            raise ValueError("forward_from_first cannot add the skip connection around the first layer")
        for module in list(first)[1:]:
            h = module(h)
        for layer in rest:
            y = layer(h)
            h = h + y if self.residual and y.shape == h.shape else y
        return self.out(h)
