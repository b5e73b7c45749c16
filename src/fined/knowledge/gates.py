"""Hard Concrete gates (Louizos, Welling & Kingma, ICLR 2018).

A gate is a stretched and clipped binary Concrete variable: it can be exactly 0 or exactly 1,
and its probability of being non-zero has a closed form, so an L0 penalty is differentiable.
With beta = 2/3, gamma = -0.1, zeta = 1.1:

- training: ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
  ``z = clamp(s * (zeta - gamma) + gamma, 0, 1)``;
- evaluation: ``z = clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``;
- expected L0: ``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
_EPS = 1e-6


class HardConcreteGate(nn.Module):
    """Gates from logits: ``log_alpha [...] -> z [...]`` in [0, 1], exactly 0 or 1 often."""

    def __init__(self, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA) -> None:
        super().__init__()
        self.beta, self.gamma, self.zeta = beta, gamma, zeta

    def forward(self, log_alpha: torch.Tensor) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(log_alpha).clamp(_EPS, 1 - _EPS)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        else:
            s = torch.sigmoid(log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def expected_l0(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """``P(z != 0)`` for each gate, same shape as ``log_alpha``."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.gamma / self.zeta))
