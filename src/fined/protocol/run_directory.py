"""The run directory of ``fined run``: its layout, its ``config.json``, and the cells' files.

::

    config.json            the resolved config, with the data fingerprint it started with
    data/                  the prepared data (when the config names a prepare job)
    kb/NAME/               knowledge bases, built once per variant and seed
    warmup/MODEL/seedS/    the shared warm-up model of each (model, seed)
    cells/LABEL/MODEL/seedS/tT/
                           one (strategy, model, seed, period) cell: model.safetensors and
                           model.json (loadable by ``fined evaluate``/``predict``), then
                           record.json, written last: its presence marks the cell done
    results.csv, forgetting.csv, summary.csv, report.md, figures/

The directory is claimed and locked for the run's life (``fined.outputs``); ``--restart``
deletes exactly the entries above, nothing a user put beside them.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError

from fined.artifacts.model_store import META as MODEL
from fined.artifacts.model_store import save_model
from fined.artifacts.weights import read_weights
from fined.config import format_validation_error
from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.models.scoring import ScoringModel
from fined.outputs import owned_directory
from fined.report.records import CellRecord, WarmupRecord

COMMAND = "run"  # the owner named in a run directory's marker
RECORD, WEIGHTS, CONFIG = "record.json", "model.safetensors", "config.json"
# Everything a run writes at the top of its directory: what --restart deletes (nothing else).
ENTRIES = (
    CONFIG, "data", "kb", "warmup", "cells", "results.csv", "forgetting.csv", "summary.csv",
    "report.md", "figures",
)  # fmt: skip


class RunDirectory:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextlib.contextmanager
    def claimed(self, restart: bool = False) -> Iterator[RunDirectory]:
        """Hold the directory for a run (``restart``: first delete what a run wrote)."""
        with owned_directory(self.root, COMMAND, restart=ENTRIES if restart else None):
            yield self

    # -- layout ------------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / "data"

    def kb(self, name: str) -> Path:
        return self.root / "kb" / name

    def warmup(self, model: str, seed: int) -> Path:
        return self.root / "warmup" / model / f"seed{seed}"

    def chain(self, label: str, model: str, seed: int) -> Path:
        return self.root / "cells" / label / model / f"seed{seed}"

    # -- config.json -------------------------------------------------------------------------
    def stored_config(self) -> dict[str, Any] | None:
        path = self.root / CONFIG
        if not path.exists():
            return None
        stored = read_json(path, "run config")
        if not isinstance(stored, dict):
            raise FinedError(f"{path}: not a valid run config (not a JSON object)")
        return stored

    def check_config(self, resolved: dict[str, Any]) -> dict[str, Any] | None:
        """The config an earlier start wrote, if any; a different one is refused (what the
        data fingerprint says is checked once the data is open)."""
        stored = self.stored_config()
        if stored is not None and {k: v for k, v in stored.items() if k != "data_fingerprint"} != {
            k: v for k, v in resolved.items() if k != "data_fingerprint"
        }:
            raise FinedError(
                f"{self.root} holds a run with a different config "
                "(choose another --out, or --restart to discard it)"
            )
        return stored

    def write_config(self, resolved: dict[str, Any]) -> None:
        atomic_write_json(self.root / CONFIG, resolved)

    # -- cells ---------------------------------------------------------------------------------
    @staticmethod
    def done(cell: Path) -> bool:
        return (cell / RECORD).is_file()

    @staticmethod
    def record(cell: Path) -> CellRecord:
        """The record of a finished cell of a chain."""
        return _read(cell, CellRecord, "cell record")

    @staticmethod
    def warmup_record(cell: Path) -> WarmupRecord:
        """The record of a finished warm-up model."""
        return _read(cell, WarmupRecord, "warm-up record")

    @staticmethod
    def weights(cell: Path, record: CellRecord | WarmupRecord) -> dict[str, torch.Tensor]:
        """The cell's model, checked against the digest its record holds."""
        return read_weights(cell / WEIGHTS, record.weights_sha256)

    @staticmethod
    def save_model(cell: Path, net: ScoringModel[Any], info: dict[str, Any]) -> str:
        """The cell's model (loadable on its own); returns its weights' sha256, for its
        record."""
        return save_model(cell, net, info)

    @staticmethod
    def finish(cell: Path, record: CellRecord | WarmupRecord) -> None:
        """The cell's record, written after its model (last: it marks the cell done); then
        the trainer's checkpoints go."""
        atomic_write_json(cell / RECORD, record.model_dump())
        shutil.rmtree(cell / "train", ignore_errors=True)

    @staticmethod
    def drop_model(cell: Path) -> None:
        """Only the newest model of a chain is kept: to go on, and to resume."""
        (cell / MODEL).unlink(missing_ok=True)
        (cell / WEIGHTS).unlink(missing_ok=True)


Record = TypeVar("Record", CellRecord, WarmupRecord)


def _read(cell: Path, kind: type[Record], what: str) -> Record:
    """A cell's record as written (by this version or an earlier one: same keys)."""
    doc = read_json(cell / RECORD, what)
    try:
        return kind.model_validate(doc)
    except ValidationError as err:
        where = f"{cell / RECORD}: not a complete {what}"
        raise FinedError(format_validation_error(err, where, kind)) from None
