"""Distillation from a frozen earlier version of a model (``kd``, and a KB absorbing a period).

The student is trained on new rows with its own loss plus ``weight`` times the BCE between
its logits and the teacher's click probabilities on the same rows (IncCTR's knowledge
distillation: the new model should not contradict the old one where the new data says
nothing). For a knowledge base the knowledge vectors themselves are also pulled towards the
snapshot's (mean squared error of ``mu``), so that the adaptors already trained on them keep
reading the same meaning.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fined.data.batch import Batch
from fined.models.frozen import frozen_snapshot
from fined.models.trainable import Forward, OwnLoss, Trainable


class Distilled(Trainable):
    """``student`` trained towards a frozen copy of ``teacher`` (taken now), with ``weight``."""

    def __init__(self, student: Trainable, teacher: Trainable, weight: float) -> None:
        super().__init__()
        self.student, self.weight = student, weight
        # A registered snapshot: it follows every .to()/.half() of this module, and is
        # neither trained nor saved with the student (``fined.models.frozen``).
        self.teacher = frozen_snapshot(teacher)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.student(batch)

    def forward_train(self, batch: Batch) -> Forward:
        """The student's pass, with the teacher's click probabilities (and knowledge means,
        for a knowledge base) on the same rows beside its own parts."""
        out = self.student.forward_train(batch)
        with torch.no_grad():
            taught = self.teacher.forward_train(batch)
        parts = {**out.parts, "teacher.prob": torch.sigmoid(taught.logits)}
        if "mu" in taught.parts:
            parts["teacher.mu"] = taught.parts["mu"]
        return Forward(out.logits, out.fields, parts)

    def auxiliary_step(self, out: Forward) -> None:
        self.student.auxiliary_step(out)

    def own_loss(self, batch: Batch, out: Forward) -> OwnLoss:
        own = self.student.own_loss(batch, out)
        terms = dict(own.terms)
        soft = F.binary_cross_entropy_with_logits(out.logits, out.parts["teacher.prob"])
        terms["distill"] = soft.detach()
        total = own.value + self.weight * soft
        if "mu" in out.parts and "teacher.mu" in out.parts:
            drift = F.mse_loss(out.parts["mu"], out.parts["teacher.mu"])
            terms["drift"] = drift.detach()
            total = total + self.weight * drift
        return OwnLoss(total, terms)

    def train(self, mode: bool = True) -> Distilled:
        super().train(mode)
        self.teacher.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        return self.student.parameter_groups()

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.student.auxiliary_optimizers()

    def ddp_ignored_parameters(self) -> list[str]:
        """The student's, and the teacher's tensors: the same snapshot on every rank, which
        DDP would otherwise broadcast as buffers at every step."""
        teacher = [f"teacher.{name}" for name, _ in self.teacher.named_buffers()]
        return [f"student.{name}" for name in self.student.ddp_ignored_parameters()] + teacher
