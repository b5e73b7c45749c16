"""Stage 1: build a knowledge base from past periods, with the generic trainer.

The KB is a model like any other to the trainer: its head gives click logits, its
``extra_loss`` adds the bottleneck, L0 and disentanglement terms, and early stopping watches
the head's AUC on the held-out tails of the past periods (never on anything later).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fined.data.loader import PeriodStore
from fined.knowledge.base import KBConfig, KnowledgeBase
from fined.knowledge.store import save_kb
from fined.train.trainer import FitResult, TrainConfig, Trainer


@dataclass
class BuiltKB:
    kb: KnowledgeBase
    fit: FitResult
    periods: list[int]


def build_knowledge_base(
    store: PeriodStore,
    periods: list[int],
    config: KBConfig,
    train: TrainConfig,
    out: str | Path | None = None,
) -> BuiltKB:
    """Train a KB on ``periods`` (train rows), select its epoch on their held-out rows."""
    last = max(periods)
    kb = KnowledgeBase(store.feature_map, config, known_through=last)
    trainer = Trainer(kb, train)
    fit = trainer.fit(
        store.load(periods, "train", known_through=last),
        store.load(periods, "holdout", known_through=last),
        run_dir=Path(out) / "checkpoints" if out is not None else None,
    )
    kb.eval()
    if out is not None:
        metrics: dict[str, Any] = {
            "best_epoch": fit.best_epoch,
            "valid": fit.best,
            "history": fit.history,
        }
        save_kb(out, kb, periods, metrics)
    return BuiltKB(kb, fit, periods)
