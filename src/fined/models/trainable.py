"""The one contract between the trainer and anything it trains.

``Trainable`` is the base of every module the trainer fits: the CTR models, a FINED model,
a knowledge base, a model distilled from an earlier one. In each training step the trainer
calls, once each and in this order:

1. ``out = model.forward_train(batch)``: the click logits ``[B]`` and, explicitly, whatever
   the loss is computed from (nothing is kept on the module between calls);
2. ``model.auxiliary_step(out)``: the one hook for parts trained apart with optimizers of
   their own (the CLUB estimator's q-network learns here, on detached inputs);
3. ``own = model.own_loss(batch, out)``: the model's own weighted terms, which the trainer
   adds to the click BCE and to the embedding penalty on ``out.fields``;

then backpropagates and steps the one optimizer it built from ``parameter_groups()``.
``auxiliary_optimizers()`` are checkpointed with it; ``ddp_ignored_parameters()`` are left
out of DDP's gradient averaging (the auxiliary step averages their gradients itself).
Evaluation and inference call the module itself: ``model(batch) -> logits [B]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fined.data.batch import Batch


@dataclass
class Forward:
    """One training forward pass."""

    logits: torch.Tensor  # [B]
    fields: torch.Tensor | None = None  # [B, F, d] looked-up field vectors (embedding penalty)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # what own_loss reads


@dataclass
class OwnLoss:
    """A model's own loss terms: their weighted sum, and each one by name for the log."""

    value: torch.Tensor  # [] added to the click BCE
    # Detached [] tensors, summed where they are and read once an epoch: a float() here
    # would make every step wait for the GPU.
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def no_loss(out: Forward) -> OwnLoss:
    return OwnLoss(out.logits.new_zeros(()))


def embedding_penalty(fields: torch.Tensor) -> torch.Tensor:
    """Squared norm of the looked-up field vectors, per sample (``train.embedding_l2``)."""
    return fields.pow(2).sum() / max(1, fields.shape[0])


class Trainable(nn.Module):
    """What the trainer trains; the defaults are those of a plain click model."""

    def forward_train(self, batch: Batch) -> Forward:
        return Forward(self(batch))

    def auxiliary_step(self, out: Forward) -> None:
        """Train the parts that learn apart, once per step (default: none)."""

    def own_loss(self, batch: Batch, out: Forward) -> OwnLoss:
        return no_loss(out)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """What the optimizer updates, as PyTorch parameter groups (a group may set its
        own ``lr``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers stepped in ``auxiliary_step``, by name (checkpointed by the trainer)."""
        return {}

    def ddp_ignored_parameters(self) -> list[str]:
        """Parameter names DDP must not manage (trained in ``auxiliary_step``)."""
        return []
