"""Distillation from a frozen earlier version of a model (``kd``, and a KB absorbing a period).

The student is trained on new rows with its own loss plus ``weight`` times the BCE between
its logits and the teacher's click probabilities on the same rows (IncCTR's knowledge
distillation: the new model should not contradict the old one where the new data says
nothing). For a knowledge base the knowledge vectors themselves are also pulled towards the
snapshot's (mean squared error of ``mu``), so that the adaptors already trained on them keep
reading the same meaning.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from fined.data.loader import Batch


class Distilled(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float) -> None:
        super().__init__()
        self.student, self.weight = student, weight
        # Not a submodule: the teacher is neither trained nor saved with the student.
        self._teacher = [copy.deepcopy(teacher).eval().requires_grad_(False)]
        self.loss_terms: dict[str, float] = {}

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.student(batch)

    def extra_loss(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        own = getattr(self.student, "extra_loss", None)
        student_last = getattr(self.student, "_last", None)  # read before the teacher runs
        total = own(batch, logits) if own is not None else logits.new_zeros(())
        terms = dict(getattr(self.student, "loss_terms", {}))
        with torch.no_grad():
            target = torch.sigmoid(self.teacher(batch))
        soft = F.binary_cross_entropy_with_logits(logits, target)
        terms["distill"] = float(soft.detach())
        total = total + self.weight * soft
        teacher_last = getattr(self.teacher, "_last", None)
        if student_last and teacher_last:
            drift = F.mse_loss(student_last["mu"], teacher_last["mu"])
            terms["drift"] = float(drift.detach())
            total = total + self.weight * drift
        self.loss_terms = terms
        return total

    def train(self, mode: bool = True) -> Distilled:
        super().train(mode)
        self.teacher.eval()
        return self

    def optimizer_parameters(self):
        chooser = getattr(self.student, "optimizer_parameters", None)
        return chooser() if chooser else [p for p in self.student.parameters() if p.requires_grad]

    def embedding_l2(self) -> torch.Tensor:
        return self.student.embedding_l2()

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        own = getattr(self.student, "auxiliary_optimizers", None)
        return own() if own is not None else {}
