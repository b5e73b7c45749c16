"""Where a fit stands, and the rule that picks its epoch.

Selection is on the validation score only: an epoch better than every earlier one becomes
the best (its weights are kept); one that is not better by more than ``min_delta`` counts
towards ``patience`` (a fit that gains next to nothing stops); epochs before
``select_after`` are neither selected nor counted (a KB whose L0 penalty still ramps up).
The state is checkpointed after every epoch, so a resumed fit picks up exactly here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainerState:
    epoch: int = 0  # the next epoch to train
    best_epoch: int = -1
    best_score: float = -math.inf  # higher is better
    bad_epochs: int = 0  # epochs since the best one
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per epoch
    seconds: float = 0.0  # training time so far (evaluation excluded)
    best_weights: dict[str, torch.Tensor] | None = None

    def observe(
        self, score: float, model: nn.Module, select_after: int, min_delta: float = 0.0
    ) -> None:
        """The validation score of the epoch just trained (``self.epoch``)."""
        if self.epoch < select_after:
            return
        progress = score > self.best_score + min_delta
        if score > self.best_score:
            self.best_score, self.best_epoch = score, self.epoch
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.bad_epochs = 0 if progress else self.bad_epochs + 1

    def stopped(self, patience: int) -> bool:
        return self.bad_epochs >= patience

    @property
    def best(self) -> dict[str, float]:
        """The best epoch's validation metrics (``auc``, ``logloss``, ...)."""
        row = self.history[self.best_epoch] if self.best_epoch >= 0 else {}
        return {k[len("valid_") :]: v for k, v in row.items() if k.startswith("valid_")}

    def to_checkpoint(self) -> dict[str, Any]:
        """Everything but the best weights (checkpointed as tensors of their own)."""
        return {name: getattr(self, name) for name in _SAVED}

    @classmethod
    def from_checkpoint(
        cls, saved: dict[str, Any], best_weights: dict[str, torch.Tensor] | None
    ) -> TrainerState:
        missing = set(_SAVED) - set(saved)
        if missing:
            raise KeyError(f"trainer state without {sorted(missing)}")
        return cls(**{name: saved[name] for name in _SAVED}, best_weights=best_weights)


_SAVED = ("epoch", "best_epoch", "best_score", "bad_epochs", "history", "seconds")
