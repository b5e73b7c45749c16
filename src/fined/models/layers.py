"""Building blocks shared by the models: MLP and the factorization machine."""

from __future__ import annotations

import torch
from torch import nn


def activation(name: str) -> nn.Module:
    acts = {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "silu": nn.SiLU,
    }
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(acts)}")
    return acts[name]()


class MLP(nn.Module):
    """``[B, in] -> [B, hidden[-1]]`` (or ``[B, out]`` with ``out``): Linear, [BatchNorm],
    activation, [Dropout] per hidden layer."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        out: int | None = None,
        act: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out is not None:
            layers.append(nn.Linear(in_dim, out))
            in_dim = out
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FactorizationMachine(nn.Module):
    """Second-order FM term over fields ``[B, F, d] -> [B]``:
    ``0.5 * sum_k ((sum_i e_ik)^2 - sum_i e_ik^2)`` (Rendle 2010)."""

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        square_of_sum = fields.sum(1).pow(2)
        sum_of_square = fields.pow(2).sum(1)
        return 0.5 * (square_of_sum - sum_of_square).sum(1)
