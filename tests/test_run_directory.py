"""A run's cell records (``fined.protocol.run_directory``, ``fined.report.records``): what an
earlier version wrote still loads on resume, and what this one writes has the same keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fined.errors import FinedError
from fined.protocol.run_directory import RECORD, RunDirectory
from fined.report.records import CellRecord, WarmupRecord

# record.json as the runner wrote it before records were classes (dicts built in place).
OLD_CELL = {
    "strategy": "fined", "kind": "fined", "model": "deepfm", "seed": 1, "t": 1,
    "period": "2024-01-02", "test_period": "2024-01-03", "auc": 0.5474851851851852,
    "logloss": 0.6899400949478149, "gauc": 0.5524967926599953, "valid_auc": 0.6602564102564102,
    "best_epoch": 1, "epochs": 3, "train_rows": 675, "train_seconds": 0.2617012690025149,
    "kb_seconds": 5.524290995999763, "bytes_kept": 76836,
    "forgetting": {"0": 0.6422475106685633, "1": 0.6602564102564102},
    "weights_sha256": "d1d3518e7badb203c03a4143c495d2949f332278d965e17b6c2ea04ad26d5f15",
}  # fmt: skip
OLD_WARMUP = {
    "model": "deepfm", "seed": 1, "t": 0, "best_epoch": 0, "valid_auc": 0.7503556187766713,
    "test_auc": 0.554187569270256, "forgetting": {"0": 0.7503556187766713},
    "weights_sha256": "9af6a707e69b54bed0971ee5dd9a0455c557cba965c0164d2c032f250ac35cd5",
}  # fmt: skip


def _cell(tmp_path: Path, doc: object) -> Path:
    cell = tmp_path / "cell"
    cell.mkdir(exist_ok=True)
    (cell / RECORD).write_text(json.dumps(doc, indent=2))
    return cell


def test_records_written_as_dicts_load_and_are_written_back_alike(tmp_path) -> None:
    cell = _cell(tmp_path, OLD_CELL)
    record = RunDirectory.record(cell)
    assert isinstance(record, CellRecord) and record.model_dump() == OLD_CELL
    assert list(record.model_dump()) == list(OLD_CELL)  # the same keys, in the same order
    RunDirectory.finish(cell, record)
    assert json.loads((cell / RECORD).read_text()) == OLD_CELL

    (tmp_path / "w").mkdir()
    warm = _cell(tmp_path / "w", OLD_WARMUP)
    loaded = RunDirectory.warmup_record(warm)
    assert isinstance(loaded, WarmupRecord) and loaded.model_dump() == OLD_WARMUP
    assert list(loaded.model_dump()) == list(OLD_WARMUP)
    # Records from before KB builds were counted have no kb_seconds: none were waited for.
    older = {k: v for k, v in OLD_CELL.items() if k != "kb_seconds"}
    assert RunDirectory.record(_cell(tmp_path, older)).kb_seconds == 0.0


@pytest.mark.parametrize(
    "doc, message",
    [
        ({k: v for k, v in OLD_CELL.items() if k != "weights_sha256"}, "weights_sha256"),
        ({**OLD_CELL, "auc": "high"}, "auc"),
        ({**OLD_CELL, "extra": 1}, "extra"),
        ([1, 2], "not a complete cell record"),
    ],
)
def test_an_incomplete_record_is_one_error_naming_it(tmp_path, doc, message) -> None:
    with pytest.raises(FinedError, match="not a complete cell record") as err:
        RunDirectory.record(_cell(tmp_path, doc))
    assert message in str(err.value) and str(tmp_path) in str(err.value)
