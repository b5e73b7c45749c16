"""Raw rows encoded as a prepared dataset encodes them: for scoring new rows with a trained
(or exported) model. The vocabularies and transforms are read from the prepared directory
(``vocab.json`` checked against the digest ``feature_map.json`` holds)::

    from fined.data.raw_rows import RawRowEncoder

    encoder = RawRowEncoder("runs/mylog")
    inputs = encoder.encode({"uid": [196, 7], "ad": ["a1", "a2"], ...})  # the log's columns
    inputs["ids"], inputs["floats"], inputs["hist_items"]   # numpy arrays, the artefact's inputs
    for raw, inputs in encoder.read("new_rows.csv"):        # a CSV or Parquet file, in chunks
        ...

Rows are given with the log's own column names (a ``table`` job's ``column:``; the feature
names for the built-in datasets, whose adapters build their columns) and read and checked
as ``fined data prepare`` read the log (``fined.data.datasets.reading``): an id that is NaN,
or text where the feature's ids are integers, and ``inf`` in a numeric column are refused,
naming the column and the feature. An id the vocabulary does not hold becomes OOV; an
exported model also maps ids that entered the vocabulary after its training periods to OOV
itself. Zero rows encode to arrays of zero rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fined.config import parse_model
from fined.data.datasets.reading import FILE_NAME, RawReading, read_batches
from fined.data.encoding import RowEncoder
from fined.data.feature_map import FeatureMap
from fined.data.numeric import NumericTransform
from fined.data.schema import FeatureSpec
from fined.data.vocab import Vocabulary
from fined.errors import FinedError
from fined.io import read_bytes, read_json

CHUNK_ROWS = 65_536  # rows of a file encoded (and scored) at a time


class RawRowEncoder:
    def __init__(self, prepared: str | Path) -> None:
        directory = Path(prepared)
        self.feature_map = fmap = FeatureMap.load(directory)
        raw = read_bytes(directory / "vocab.json", "vocabularies")
        if hashlib.sha256(raw).hexdigest() != fmap.vocab_sha256:
            raise FinedError(f"{directory / 'vocab.json'}: does not match feature_map.json")
        vocabs = {k: Vocabulary.from_json(v) for k, v in json.loads(raw).items()}
        specs = [
            FeatureSpec(
                name=f.name, kind=f.kind, source=f.source,
                vocab=None if f.vocab == f.name else f.vocab, max_len=f.max_len,
            )
            for f in fmap.features
        ]  # fmt: skip
        transforms = {f.name: NumericTransform(**f.transform) for f in fmap.features if f.transform}
        self.encoder = RowEncoder(specs, vocabs, transforms)
        self.vocabs = vocabs
        self.reading = _reading(directory, fmap)
        # Each id feature's vocabulary holds ints or text: rows to score are read as that.
        self.id_types = {
            f.name: _id_type(vocabs[f.vocab]) for f in fmap.features if f.kind != "numeric"
        }

    @property
    def columns(self) -> list[str]:
        """The raw columns rows to score must have (the log's own names)."""
        return self.reading.raw_columns()

    def decode(self, feature: str, indices: np.ndarray) -> list[Any]:
        """The raw ids of a categorical feature's encoded ``indices`` (None: padding or OOV;
        ``"#bucket k"`` for an id hashed into a shared bucket)."""
        spec = self.feature_map.feature(feature)
        if spec.kind != "categorical":
            raise FinedError(f"{feature!r} is not a categorical feature: its ids cannot be decoded")
        vocab = self.vocabs[spec.vocab]
        first = vocab.first
        out: list[Any] = []
        for i in indices.tolist():
            if i >= first:
                out.append(vocab.ids[i - first])
            elif i >= 2:
                out.append(f"#bucket {i - 2}")
            else:
                out.append(None)
        return out

    def encode(self, rows: pa.Table | pa.RecordBatch | dict[str, Any]) -> dict[str, np.ndarray]:
        """``{"ids": [B, F_id] int32, "floats": [B, F_float] float32, <sequence>: [B, L]
        int32}`` from raw values: a table or ``{column: values}`` with the log's columns
        (sequences as lists, oldest first, or text as the log held them)."""
        table = pa.table(rows) if isinstance(rows, dict) else rows
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            named = next(c for c in self.reading.columns if c.column == missing[0])
            raise FinedError(
                f"raw rows: no {named.named()} (rows are given with the log's own "
                f"column names: {', '.join(self.columns)})"
            )
        try:
            return self._encode(table, 0)
        except FinedError as err:
            raise FinedError(f"raw rows: {err}") from None

    def read(
        self, path: str | Path, extra: Sequence[str] = (), chunk_rows: int = CHUNK_ROWS
    ) -> Iterator[tuple[pa.RecordBatch, dict[str, np.ndarray]]]:
        """The rows of a CSV or Parquet file with the log's columns (a CSV in the log's
        layout: its delimiter, its header), chunk by chunk: each chunk's raw columns (the
        features' and ``extra``) and its encoded inputs, as ``encode`` gives them."""
        path = Path(path)
        columns = list(dict.fromkeys([*self.columns, *extra]))
        types = self.reading.csv_types(columns)
        row0 = 0
        for raw in read_batches(path, columns, self.reading, types, chunk_rows):
            try:
                encoded = self._encode(raw, row0)
            except FinedError as err:
                raise FinedError(f"{path}: {err}") from None
            yield raw, encoded
            row0 += raw.num_rows

    def _encode(self, rows: pa.Table | pa.RecordBatch, row0: int) -> dict[str, np.ndarray]:
        values = self.reading.features(rows, row0)
        for name, want in self.id_types.items():
            if want is not None:
                values[name] = _as_id_type(values[name], want, self._named(name))
        encoded = self.encoder.encode(pa.RecordBatch.from_pydict(values))
        n, fmap = rows.num_rows, self.feature_map
        ids = [encoded[f.name].to_numpy() for f in fmap.id_features]
        floats = [encoded[f.name].to_numpy() for f in fmap.float_features]
        out = {
            "ids": np.stack(ids, 1).astype(np.int32) if ids else np.zeros((n, 0), np.int32),
            "floats": np.stack(floats, 1).astype(np.float32)
            if floats
            else np.zeros((n, 0), np.float32),
        }
        for f in fmap.sequence_features:
            flat = encoded[f.name].flatten().to_numpy()
            out[f.name] = flat.reshape(n, f.max_len).astype(np.int32)
        return out

    def _named(self, feature: str) -> str:
        return next(c for c in self.reading.columns if c.name == feature).named()


def _reading(directory: Path, fmap: FeatureMap) -> RawReading:
    """How the log was read (a ``table`` job keeps it); else each feature reads the column of
    its own name, as the built-in adapters hand them to prepare."""
    path = directory / FILE_NAME
    if path.is_file():
        return parse_model(RawReading, read_json(path, "raw column description"), str(path))
    columns = [{"name": f.name, "kind": f.kind, "column": f.name} for f in fmap.features]
    return RawReading.model_validate({"columns": columns})


def _id_type(vocab: Vocabulary) -> pa.DataType | None:
    """int64 or string, as the vocabulary's ids are (None: it holds none, anything goes)."""
    if not vocab.ids:
        return None
    return pa.int64() if isinstance(vocab.ids[0], int) else pa.string()


def _as_id_type(values: pa.Array, want: pa.DataType, named: str) -> pa.Array:
    """Ids (or lists of ids) as the vocabulary's type: integers as text where the log's ids
    were text; text as integers where they were integers (an empty field is a missing id;
    text that is no integer is refused, naming it: it cannot be an id this feature knows)."""
    listed = pa.types.is_list(values.type)
    flat = pc.list_flatten(values) if listed else values
    if flat.type == want:
        return values
    if want == pa.int64() and pa.types.is_string(flat.type):
        flat = pc.if_else(pc.equal(flat, ""), pa.scalar(None, pa.string()), flat)
        try:
            as_int = pc.cast(flat, pa.int64())
        except pa.ArrowInvalid:
            bad = next(v for v in flat.to_pylist() if v is not None and not _is_int(v))
            raise FinedError(
                f"{named}: id {bad!r} is not an integer, and this feature's ids are integers"
            ) from None
        if not listed:
            return as_int
        lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), as_int)
    return pc.cast(values, pa.list_(want) if listed else want)


def _is_int(text: str) -> bool:
    try:
        pc.cast(pa.array([text]), pa.int64())
    except pa.ArrowInvalid:
        return False
    return True
