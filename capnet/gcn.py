"""A residual GCN over the label graph: f'_c = f_c + g_c, with g = 0 before training."""

from __future__ import annotations

import torch
from torch import nn


class GraphConv(nn.Module):
    """One propagation step: A X W."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return adjacency @ self.linear(x)


class ResidualGCN(nn.Module):
    """Graph convolutions whose last layer starts at zero: an untrained model is prompt-only CLIP."""

    def __init__(
        self, dim: int, hidden: int | None = None, layers: int = 3, negative_slope: float = 0.2
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("the GCN needs at least one layer")
        hidden = hidden or dim
        dims = [dim] + [hidden] * (layers - 1) + [dim]
        self.layers = nn.ModuleList(GraphConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.LeakyReLU(negative_slope)
        nn.init.zeros_(self.layers[-1].linear.weight)

    def residual(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, adjacency)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x, adjacency.to(x.dtype))
