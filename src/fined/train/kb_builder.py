"""Stage 1: build a knowledge base from past periods, with the generic trainer.

The KB is a model like any other to the trainer (``fined.models.trainable``): its head gives
click logits, its own loss adds the bottleneck, L0 and disentanglement terms, and early
stopping watches the head's AUC on the held-out tails of the past periods (never on anything
later). Its trainer settings default to ``KBTrainConfig``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fined import distributed
from fined.artifacts.kb_store import round_through_storage, save_kb
from fined.data.loader import PeriodStore
from fined.errors import FinedError
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.train.config import TrainConfig
from fined.train.trainer import FitResult, Trainer, seed_everything


def check_l0_ramp(
    config: KBConfig,
    train: TrainConfig,
    rows: int,
    keys: tuple[str, str] = ("train.epochs", "l0_warmup_steps"),
) -> int:
    """Epochs the L0 weight takes to ramp up when a KB trains on ``rows`` rows (0 without an
    L0 penalty); a ramp that outlasts the build is an error, found before any training.
    ``keys``: the names of the build's epochs and of the ramp's steps where the user sets
    them (a KB YAML's by default; a run config's are ``kb_train.epochs``, ``kb.…``)."""
    if not config.sparse or config.dense_gates:
        return 0
    steps = max(1, math.ceil(rows / train.batch_size))
    ramp_epochs = math.ceil(config.l0_warmup_steps / steps)
    if ramp_epochs >= train.epochs:
        # An epoch is selected only once the ramp is over: the ramp's epochs must leave one.
        raise FinedError(
            f"the L0 penalty ramps up over {config.l0_warmup_steps} steps, into epoch "
            f"{ramp_epochs} of {steps} steps each; the KB is selected from an epoch after the "
            f"ramp, but training stops after {train.epochs} epochs: raise {keys[0]} to "
            f"{ramp_epochs + 1} or more, or lower {keys[1]} to "
            f"{(train.epochs - 1) * steps} or less"
        )
    return ramp_epochs


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
    resume: bool = False,
    device: torch.device | str = "cpu",
) -> BuiltKB:
    """Train a KB on ``periods`` (train rows), select its epoch on their held-out rows."""
    last = max(periods)
    seed_everything(train.seed, train.deterministic)  # the initial weights too
    kb = KnowledgeBase(store.feature_map, config, known_through=last)
    rows = store.load(periods, "train", known_through=last)
    # The gates take their final form only once the L0 weight has finished ramping up: no
    # epoch before that may be selected. (All ranks' rows: the batch size is global.)
    ramp_epochs = check_l0_ramp(config, train, len(rows) * distributed.context().world)
    if ramp_epochs:
        train = train.model_copy(update={"select_after": max(train.select_after, ramp_epochs)})
    trainer = Trainer(kb, train, device=device)
    fit = trainer.fit(
        rows,
        store.load(periods, "holdout", known_through=last),
        run_dir=Path(out) / "checkpoints" if out is not None else None,
        resume=resume,
    )
    kb.eval()
    round_through_storage(kb)  # the KB as it will be stored (and loaded) from now on
    if out is not None and distributed.context().main:  # with several ranks, rank 0 writes
        metrics: dict[str, Any] = {
            "seed": train.seed,
            "best_epoch": fit.best_epoch,
            "valid": fit.best,
            "history": fit.history,
        }
        save_kb(out, kb, periods, metrics)
    return BuiltKB(kb, fit, periods)
