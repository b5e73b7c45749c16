"""Scoring with a trained model, as a library call: ``predict`` is what ``fined predict`` runs.

A saved model (``model.json`` + ``model.safetensors``, written by ``fined train`` or a run's
cell) is loaded against the prepared dataset it was trained on; ids that entered the
vocabulary after its last training period are OOV to it, as in training::

    from fined.train.predict import load_saved, predict, write_scores

    saved = load_saved("runs/deepfm", "runs/ml100k")
    scores = predict(saved, [6, 7], columns=["user_id", "row"])  # a pyarrow Table
    write_scores(scores, "scores.parquet")                         # or .csv
    scores = predict_rows(saved, "new_rows.csv", columns=["request_id"])  # raw rows

Raw rows (``predict_rows``) take the path a serving side takes: ``RawRowEncoder`` reads a CSV
or Parquet file with the log's own column names and checks it as prepare checked the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from fined.artifacts.model_store import known_through, load_model
from fined.data.batch import Batch
from fined.data.loader import PeriodStore
from fined.data.raw_rows import RawRowEncoder
from fined.devices import resolve_device
from fined.errors import FinedError
from fined.io import atomic_write_bytes
from fined.models.scoring import ScoringModel
from fined.train.trainer import Trainer

SCORE_FORMATS = (".csv", ".parquet")


@dataclass(frozen=True)
class SavedModel:
    """A saved model, loaded (in evaluation mode) with the dataset it was trained on."""

    store: PeriodStore
    model: ScoringModel[Any]
    meta: dict[str, Any]  # its model.json
    known_through: int  # the last period whose ids it knows (later ones are OOV to it)


def load_saved(run_dir: str | Path, data: str | Path) -> SavedModel:
    """The model saved in ``run_dir``, for the prepared dataset ``data`` (which must be the
    one it was trained on: checked by the feature map's fingerprint)."""
    store = PeriodStore(data)
    model, meta = load_model(run_dir, store.feature_map)
    return SavedModel(store, model, meta, known_through(meta, store.feature_map))


def predict(
    saved: SavedModel,
    periods: Sequence[int],
    columns: Sequence[str] = (),
    device: str = "auto",
) -> pa.Table:
    """Click probabilities for every row of ``periods``: one row per stored row, with its
    ``period`` (name), ``time``, ``label`` and ``score``, then each of ``columns``: a
    categorical feature's raw ids (decoded with the saved vocabularies), or ``row`` (the
    row's place in its period), to join the scores back to the raw data. ``device``: as
    ``--device`` takes it."""
    store, fmap = saved.store, saved.store.feature_map
    raw = RawRowEncoder(store.directory) if [c for c in columns if c != "row"] else None
    ids = {f.name: j for j, f in enumerate(fmap.id_features)}
    for name in columns:
        if name != "row" and (name not in ids or fmap.feature(name).kind != "categorical"):
            raise FinedError(f"--columns {name!r}: not a categorical feature (nor `row`)")
    trainer = Trainer(saved.model, device=resolve_device(device))
    limits, seq_limits = fmap.known_limits(saved.known_through)
    parts = []
    for p in periods:
        stored = store.load([p])  # as stored: raw ids decode from these
        rows = stored.forget_later_ids(torch.tensor(limits), seq_limits)
        table = {
            "period": pa.array([fmap.periods[p].name] * len(rows)),
            "time": rows.time.numpy(),
            "label": rows.label.numpy().astype("int8"),
            "score": trainer.predict(rows),
        }
        for name in columns:
            if name == "row":
                table["row"] = pa.array(range(len(rows)), pa.int64())
            else:
                assert raw is not None
                values = raw.decode(name, stored.ids[:, ids[name]].numpy())
                if len({type(v) for v in values if v is not None}) > 1:  # ids and "#bucket k"
                    values = [None if v is None else str(v) for v in values]
                table[name] = pa.array(values)
        parts.append(pa.table(table))
    return pa.concat_tables(parts)


def predict_rows(
    saved: SavedModel, rows: str | Path, columns: Sequence[str] = (), device: str = "auto"
) -> pa.Table:
    """Click probabilities for the raw rows of a CSV or Parquet file (the log's own column
    names; see ``RawRowEncoder``), in file order: ``row`` (the row's place in the file),
    ``score``, then each of ``columns``, any column of the file, copied as it is. Ids that
    entered the vocabulary after the model's training periods are OOV to it, as in
    ``predict``; a file of no rows gives no scores."""
    encoder = RawRowEncoder(saved.store.directory)
    extra = [c for c in columns if c != "row"]
    trainer = Trainer(saved.model, device=resolve_device(device))
    limits, seq_limits = encoder.feature_map.known_limits(saved.known_through)
    scores, kept = [], []
    for raw, inputs in encoder.read(rows, extra):
        n = raw.num_rows
        batch = Batch(
            ids=torch.from_numpy(inputs["ids"]),
            floats=torch.from_numpy(inputs["floats"]),
            sequences={
                k: torch.from_numpy(v) for k, v in inputs.items() if k not in ("ids", "floats")
            },
            label=torch.zeros(n),
            time=torch.zeros(n, dtype=torch.int64),
        )
        scores.append(trainer.predict(batch.forget_later_ids(torch.tensor(limits), seq_limits)))
        kept.append(pa.table({c: raw.column(c) for c in extra}))
    n = sum(len(s) for s in scores)
    table = {
        "row": pa.array(range(n), pa.int64()),
        "score": pa.array(np.concatenate(scores) if scores else np.empty(0, np.float32)),
    }
    for c in extra:
        table[c] = pa.concat_tables(kept)[c] if kept else pa.array([], pa.string())
    return pa.table(table)


def check_score_path(out: str | Path) -> Path:
    """``out``, if its suffix names a format scores are written in (CSV or Parquet)."""
    out = Path(out)
    if out.suffix not in SCORE_FORMATS:
        raise FinedError(f"--out {out}: use a .csv or .parquet file name")
    return out


def write_scores(scores: pa.Table, out: str | Path) -> None:
    """``scores`` to ``out`` (atomically), as CSV or Parquet by its suffix."""
    out = check_score_path(out)
    sink = pa.BufferOutputStream()
    if out.suffix == ".csv":
        pacsv.write_csv(scores, sink)
    else:
        pq.write_table(scores, sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
