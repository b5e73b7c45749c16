"""``fined train --kb``: is the knowledge base worth feeding here? Asked forward.

A training job fed by a KB keeps its base model beside it, and asks the question a test
asks without touching a test period: both are trained on every training period but the last
(the epoch chosen on those periods' held-out rows) and score the last one, whose rows come
after every row they trained on. The kind that scores it better is the one the job then
trains on all its periods (a tie keeps the base model: the past has not shown that it pays).
The held-out rows of the periods trained on cannot answer this: they reward remembering.

Where the question cannot be asked forward (a single training period, or a KB that
memorized the last training period, which would then score rows it has seen), the job trains
the FINED model as asked and says why no check was made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fined.data.loader import PeriodStore
from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.models.scoring import ScoringModel
from fined.train.config import TrainConfig
from fined.train.trainer import Trainer, seed_everything

CHECK_FILE = "forward_check.json"  # in the run directory: a resumed job reads its choice


@dataclass(frozen=True)
class ForwardCheck:
    """What the check found: the period scored, each kind's AUC on it, and the choice."""

    keeps_kb: bool
    reason: str  # one sentence for the log and results.json
    period: str | None = None  # the period scored (None: no check)
    fined_auc: float | None = None
    base_auc: float | None = None


def check_forward(
    store: PeriodStore,
    train_periods: list[int],
    kb_last_period: int,
    build: Callable[[bool], ScoringModel[Any]],
    config: TrainConfig,
    device: torch.device,
) -> ForwardCheck:
    """``build(with_kb)``: a fresh FINED model (True) or base model (False) of the job."""
    names = [p.name for p in store.feature_map.periods]
    last = train_periods[-1]
    earlier = train_periods[:-1]
    if not earlier:
        return ForwardCheck(True, "one training period: no later rows to check the KB on, "
                            "the FINED model is kept")  # fmt: skip
    if kb_last_period >= last:
        return ForwardCheck(True, f"the KB memorized {names[last]}, the last training period: "
                            "no rows to check it on that it has not seen; the FINED model "
                            "is kept")  # fmt: skip
    known = earlier[-1]
    train = store.load(earlier, "train", known_through=known)
    valid = store.load(earlier, "holdout", known_through=known)
    ahead = store.load([last], "all", known_through=known)
    quiet = config.model_copy(update={"progress": False})
    scores: dict[bool, float] = {}
    for with_kb in (False, True):
        seed_everything(config.seed, config.deterministic)  # both start alike
        net = build(with_kb)
        trainer = Trainer(net, quiet, device=device)
        trainer.fit(train, valid)
        scores[with_kb] = trainer.evaluate(ahead)["auc"]
    keeps = scores[True] > scores[False]
    verdict = "the FINED model is trained" if keeps else "the base model is trained instead"
    reason = (f"forward check on {names[last]} (trained on the periods before it): FINED "
              f"{scores[True]:.4f}, base model {scores[False]:.4f}: {verdict}")  # fmt: skip
    return ForwardCheck(keeps, reason, names[last], scores[True], scores[False])


def recorded_or_checked(
    run_dir: Path | None, resume: bool, check: Callable[[], ForwardCheck]
) -> ForwardCheck:
    """The check a resumed job already made (its choice must not change under it), else a
    new one, recorded in the run directory."""
    path = run_dir / CHECK_FILE if run_dir is not None else None
    if resume and path is not None and path.is_file():
        try:
            return ForwardCheck(**read_json(path, "forward check"))
        except TypeError as err:
            raise FinedError(f"{path}: not a forward check of this version ({err})") from None
    result = check()
    if path is not None:
        atomic_write_json(path, asdict(result))
    return result
