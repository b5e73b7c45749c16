"""The one contract between the trainer and anything it trains.

``Trainable`` is the base of every module the trainer fits: the CTR models, a FINED model,
a knowledge base, a model distilled from an earlier one. In each training step the trainer
calls, once each and in this order:

1. ``out = model.forward_train(batch)``: the click logits ``[B]`` and, explicitly, whatever
   the loss is computed from, as typed fields of a ``Forward`` (a model with more to say
   subclasses it: ``KBForward``, ``FinedForward``); nothing is kept on the module between
   calls;
2. ``model.auxiliary_step(out)``: state that moves with training but is not trained (a step
   counter, a moving verdict); then one step of each ``auxiliary_groups()`` group, the
   parameters trained apart on a loss of their own (the CLUB estimator's q-network), with
   an optimizer the trainer builds, averages over the ranks and checkpoints;
3. ``own = model.own_loss(batch, out)``: the model's own weighted terms, which the trainer
   adds to the click BCE and to the embedding penalty on ``out.fields``;

then backpropagates and steps the one optimizer it built from ``parameter_groups()``.
Evaluation and inference call the module itself: ``model(batch) -> logits [B]``.

``Trainable`` is generic in the type of its ``Forward``: the pass a model's ``own_loss``
reads is the one its ``forward_train`` made, which the type checker proves; a field a model
does not make is an ``AttributeError`` at once, never a silently missing term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import torch
from torch import nn

from fined.data.batch import Batch, RowKnowledge


@dataclass(frozen=True)
class Teacher:
    """A frozen teacher's pass on the student's rows (``fined.protocol.distill``)."""

    prob: torch.Tensor  # [B] its click probabilities
    latent: torch.Tensor | None  # its ``Forward.latent``, or None


@dataclass(frozen=True, kw_only=True)
class Forward:
    """One training forward pass: what the trainer and every loss read, by name and type."""

    logits: torch.Tensor  # [B]
    fields: torch.Tensor | None = None  # [B, F, d] looked-up field vectors (embedding penalty)
    # The representation a distilled copy of the model is held to (mean squared drift from
    # the teacher's), or None: no drift term (a KB's knowledge means ``[B, K, d]``).
    latent: torch.Tensor | None = None
    teacher: Teacher | None = None  # the teacher's pass on the same rows (a ``Distilled``)


Out = TypeVar("Out", bound=Forward)


@dataclass(frozen=True)
class AuxiliaryGroup(Generic[Out]):
    """Parameters trained apart from the model's others: after each training pass the
    trainer takes one step of an Adam of its own (``lr``) on ``loss(out)`` (whose inputs the
    module detaches), averages the gradients over the ranks first (DDP does not manage
    these parameters), and checkpoints the optimizer under ``name``. They must be left out
    of ``parameter_groups()``."""

    name: str
    params: list[nn.Parameter]
    lr: float
    loss: Callable[[Out], torch.Tensor]  # [] from this step's pass


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


class Trainable(nn.Module, Generic[Out]):
    """What the trainer trains, with the type of its training pass ``Out``; the defaults
    are those of a plain click model (``Trainable[Forward]``)."""

    def forward_train(self, batch: Batch) -> Out:
        return cast(Out, Forward(logits=self(batch)))  # a plain click model's: Out is Forward

    def auxiliary_step(self, out: Out) -> None:
        """Move the state that follows training but is not trained, once per step (default:
        none)."""

    def own_loss(self, batch: Batch, out: Out) -> OwnLoss:
        return no_loss(out)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """What the optimizer updates, as PyTorch parameter groups (a group may set its
        own ``lr``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def auxiliary_groups(self) -> list[AuxiliaryGroup[Out]]:
        """Parameters trained apart, each on a loss of its own (default: none)."""
        return []

    def row_knowledge(self) -> Callable[[Batch], RowKnowledge] | None:
        """What the model reads of each row but never trains (a frozen KB's knowledge), as a
        function of a batch: the trainer computes it once for the rows of a fit and hands
        it back in ``Batch.knowledge`` instead of it being recomputed every step of every
        epoch. None (the default): nothing to compute once."""
        return None
