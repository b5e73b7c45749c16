"""The log of a fit, one row per epoch: ``metrics.jsonl`` and ``train.log`` (a line per
epoch, for people) in the run directory, both rewritten whole and atomically after each
epoch (so they always match the checkpoint, resumed runs included); the new epoch's line to
a console; and TensorBoard scalars when ``train.tensorboard`` is on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fined.errors import FinedError
from fined.io import atomic_write_text

METRICS, LOG = "metrics.jsonl", "train.log"


def epoch_line(row: dict[str, Any], best: bool) -> str:
    """``epoch 3  loss 0.4321  valid AUC 0.7012  LogLoss 0.6123  lr 1e-03  12.3 s  (best)``."""
    terms = "".join(
        f"  {k.removeprefix('train_')} {v:.4g}"
        for k, v in row.items()
        if k.startswith("train_") and k not in ("train_loss", "train_seconds")
    )
    return (
        f"epoch {row['epoch']}  loss {row['train_loss']:.4f}{terms}  valid AUC "
        f"{row.get('valid_auc', math.nan):.4f}  LogLoss {row.get('valid_logloss', math.nan):.4f}"
        f"  lr {row['lr']:.0e}  {row['train_seconds']:.1f} s" + ("  (best)" if best else "")
    )


class EpochLog:
    def __init__(
        self, run_dir: Path | None, tensorboard: bool, log: Callable[[str], None] | None = None
    ) -> None:
        self.run_dir, self.log = run_dir, log
        self.board = _tensorboard(run_dir) if tensorboard and run_dir is not None else None

    def epoch_done(self, history: list[dict[str, Any]], best_epoch: int) -> None:
        """``history``: every epoch so far, the last one just finished."""
        if self.log is not None:
            self.log(epoch_line(history[-1], history[-1]["epoch"] == best_epoch))
        self.write(history, best_epoch)
        if self.board is not None:
            row = history[-1]
            for key, value in row.items():
                if isinstance(value, float) and not math.isnan(value):
                    self.board.add_scalar(key, value, row["epoch"])

    def write(self, history: list[dict[str, Any]], best_epoch: int) -> None:
        """The two files of ``history`` (nothing said, nothing to TensorBoard): also what a
        resumed fit writes first, for a run killed between a checkpoint and its log."""
        if self.run_dir is None:
            return
        lines = "".join(json.dumps(row) + "\n" for row in history)
        atomic_write_text(self.run_dir / METRICS, lines)
        text = "".join(epoch_line(r, r["epoch"] == best_epoch) + "\n" for r in history)
        atomic_write_text(self.run_dir / LOG, text)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FinedError("train.tensorboard: install the `tensorboard` package first") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
