"""Distillation from a frozen earlier version of a model (``kd``, and a KB absorbing a period).

The student is trained on new rows with its own loss plus ``weight`` times the BCE between
its logits and the teacher's click probabilities on the same rows (IncCTR's knowledge
distillation: the new model should not contradict the old one where the new data says
nothing). For a knowledge base the knowledge vectors themselves are also pulled towards the
snapshot's (mean squared error of ``mu``), so that the adaptors already trained on them keep
reading the same meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch.nn import functional as F

from fined.data.batch import Batch, RowKnowledge
from fined.models.frozen import frozen_snapshot
from fined.models.trainable import AuxiliaryGroup, Out, OwnLoss, Teacher, Trainable


class Distilled(Trainable[Out]):
    """``student`` trained towards a frozen copy of ``teacher``, with ``weight``. The copy is
    taken now: by default of the student itself as it is now (the model of t-1 it was warm
    started from), which it then leaves behind as it trains. Its training pass is the
    student's, with the teacher's (``Forward.teacher``) beside."""

    def __init__(
        self, student: Trainable[Out], weight: float, teacher: Trainable[Out] | None = None
    ) -> None:
        super().__init__()
        self.student, self.weight = student, weight
        # A registered snapshot: it follows every .to()/.half() of this module, and is
        # neither trained nor saved with the student (``fined.models.frozen``).
        self.teacher = frozen_snapshot(student if teacher is None else teacher)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.student(batch)

    def forward_train(self, batch: Batch) -> Out:
        """The student's pass, with the teacher's click probabilities (and its ``latent``:
        a knowledge base's knowledge means) on the same rows beside it."""
        out = self.student.forward_train(batch)
        with torch.no_grad():
            taught = self.teacher.forward_train(batch)
        return replace(out, teacher=Teacher(torch.sigmoid(taught.logits), taught.latent))

    def auxiliary_step(self, out: Out) -> None:
        self.student.auxiliary_step(out)

    def own_loss(self, batch: Batch, out: Out) -> OwnLoss:
        own = self.student.own_loss(batch, out)
        teacher = out.teacher
        if teacher is None:
            raise ValueError("a training pass without its teacher's (made by forward_train)")
        terms = dict(own.terms)
        soft = F.binary_cross_entropy_with_logits(out.logits, teacher.prob)
        terms["distill"] = soft.detach()
        total = own.value + self.weight * soft
        if out.latent is not None and teacher.latent is not None:
            drift = F.mse_loss(out.latent, teacher.latent)
            terms["drift"] = drift.detach()
            total = total + self.weight * drift
        return OwnLoss(total, terms)

    def train(self, mode: bool = True) -> Distilled[Out]:
        super().train(mode)
        self.teacher.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        return self.student.parameter_groups()

    def auxiliary_groups(self) -> list[AuxiliaryGroup[Out]]:
        return self.student.auxiliary_groups()

    def row_knowledge(self) -> Callable[[Batch], RowKnowledge] | None:
        """The student's: the teacher, a copy of it taken before the fit, reads the same
        frozen knowledge (a student whose KB is fine-tuned computes none)."""
        return self.student.row_knowledge()
