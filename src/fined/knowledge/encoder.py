"""The knowledge encoder (the memory network): one Gaussian knowledge vector per pattern.

Pattern k of an instance is pooled from its gated field embeddings: the masked mean
``sum_i z_ik e_i / sum_i z_ik`` and the FM-style second-order term inside the pattern
``0.5 * ((sum_i z_ik e_i)^2 - sum_i z_ik^2 e_i^2)``. With a learned slot embedding
concatenated, an MLP shared by all slots encodes them into ``(mu_k, log sigma_k^2)``; the
knowledge vector is ``v_k = mu_k + sigma_k * eps`` in training and ``mu_k`` at inference
(the frozen KB's ``query`` computes ``mu_k`` alone, by ``frozen_means``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fined.models.layers import MLP


class KnowledgeEncoder(nn.Module):
    """``(fields [B, F, d], z [B, F, K]) -> (v, mu, logvar)``, each ``[B, K, d]``."""

    def __init__(self, dim: int, slots: int, hidden: list[int], stochastic: bool = True) -> None:
        super().__init__()
        self.slot = nn.Parameter(torch.randn(slots, dim) * 0.01)
        self.body = MLP(3 * dim, hidden)
        self.mu = nn.Linear(self.body.out_dim, dim)
        self.logvar = nn.Linear(self.body.out_dim, dim)
        self.stochastic = stochastic  # False: the no-essential ablation (deterministic v = mu)

    def _hidden(self, fields: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        zt = z.transpose(1, 2)  # [B, K, F]
        summed = zt @ fields
        squares = zt.pow(2) @ fields.pow(2)
        mean = summed / zt.sum(-1, keepdim=True).clamp_min(1e-6)
        second_order = 0.5 * (summed.pow(2) - squares)
        # The first layer sees [mean, second order, slot]; the slot's share of it is the same
        # for every row, so it is computed once per call ([K, h]) instead of concatenating
        # the slot embedding to every row's input. Same function, a third fewer products.
        pooled = 2 * fields.shape[-1]
        pattern = F.linear(torch.cat([mean, second_order], -1), self.body.first.weight[:, :pooled])
        return self.body.after_first(pattern + self.slot_bias())

    def slot_bias(self) -> torch.Tensor:
        """``[K, h]``: each slot's share of the first layer, its bias included."""
        first = self.body.first
        return F.linear(self.slot, first.weight[:, 2 * self.slot.shape[-1] :], first.bias)

    def forward(self, fields: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self._hidden(fields, z)
        mu, logvar = self.mu(hidden), self.logvar(hidden).clamp(-8.0, 8.0)
        if self.training and self.stochastic:
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp(), mu, logvar
        return mu, mu, logvar

    @torch.no_grad()
    def frozen_means(self, fields: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``mu [B, K, d]`` of each pattern ``z [B, F, K]`` over ``fields [B, F, d]``, for
        inference: the pooled mean and second-order term written into one buffer for the
        first product, the slot's share of that layer added as a ``[K, h]`` bias, the rest in
        place."""
        b, _, d = fields.shape
        zt = z.transpose(1, 2)
        slots = zt.shape[1]
        pooled = fields.new_empty(b, slots, 2 * d)
        summed = torch.bmm(zt, fields)
        torch.div(summed, zt.sum(-1, keepdim=True).clamp_min_(1e-6), out=pooled[..., :d])
        squares = torch.bmm(zt.square(), fields.square()).mul_(-0.5)
        torch.addcmul(squares, summed, summed, value=0.5, out=pooled[..., d:])
        hidden = torch.mm(pooled.view(-1, 2 * d), self.body.first.weight[:, : 2 * d].t())
        hidden.view(b, slots, hidden.shape[1]).add_(self.slot_bias()).relu_()  # no -1: B may be 0
        hidden = self.body.after_first_activation(hidden)
        return torch.addmm(self.mu.bias, hidden, self.mu.weight.t()).view(b, slots, d)
