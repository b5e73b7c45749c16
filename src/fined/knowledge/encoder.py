"""The knowledge encoder (the memory network): one Gaussian knowledge vector per pattern.

Pattern k of an instance is pooled from its gated field embeddings: the masked mean
``sum_i z_ik e_i / sum_i z_ik`` and the FM-style second-order term inside the pattern
``0.5 * ((sum_i z_ik e_i)^2 - sum_i z_ik^2 e_i^2)``. With a learned slot embedding, an MLP
shared by all slots encodes them into ``(mu_k, log sigma_k^2)``; the knowledge vector is
``v_k = mu_k + sigma_k * eps`` in training and ``mu_k`` at inference.
"""

from __future__ import annotations

import torch
from torch import nn

from fined.models.layers import MLP


class KnowledgeEncoder(nn.Module):
    """``(fields [B, F, d], z [B, F, K]) -> (v, mu, logvar)``, each ``[B, K, d]``."""

    def __init__(self, dim: int, slots: int, hidden: list[int], stochastic: bool = True) -> None:
        super().__init__()
        self.slot = nn.Parameter(torch.randn(slots, dim) * 0.01)
        self.net = MLP(3 * dim, hidden, out=2 * dim)
        self.stochastic = stochastic  # False: the no-essential ablation (deterministic v = mu)

    def forward(self, fields: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        summed = torch.einsum("bfk,bfd->bkd", z, fields)
        squares = torch.einsum("bfk,bfd->bkd", z.pow(2), fields.pow(2))
        mean = summed / z.sum(1).unsqueeze(-1).clamp_min(1e-6)
        second_order = 0.5 * (summed.pow(2) - squares)
        slot = self.slot.expand(fields.shape[0], -1, -1)
        mu, logvar = self.net(torch.cat([mean, second_order, slot], -1)).chunk(2, dim=-1)
        logvar = logvar.clamp(-8.0, 8.0)
        if self.training and self.stochastic:
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp(), mu, logvar
        return mu, mu, logvar
