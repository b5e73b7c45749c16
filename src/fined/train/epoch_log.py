"""The log of a fit, one row per epoch: ``metrics.jsonl`` in the run directory (rewritten
whole and atomically after each epoch, so it always matches the checkpoint), and TensorBoard
scalars when ``train.tensorboard`` is on."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fined.errors import FinedError
from fined.io import atomic_write_text

METRICS = "metrics.jsonl"


class EpochLog:
    def __init__(self, run_dir: Path | None, tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.board = _tensorboard(run_dir) if tensorboard and run_dir is not None else None

    def epoch_done(self, history: list[dict[str, Any]]) -> None:
        """``history``: every epoch so far, the last one just finished."""
        if self.run_dir is None:
            return
        lines = "".join(json.dumps(row) + "\n" for row in history)
        atomic_write_text(self.run_dir / METRICS, lines)
        if self.board is not None:
            row = history[-1]
            for key, value in row.items():
                if isinstance(value, float) and not math.isnan(value):
                    self.board.add_scalar(key, value, row["epoch"])


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FinedError("train.tensorboard: install the `tensorboard` package first") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
