"""How a log's raw columns become feature values: one path for ``fined data prepare`` (the
``table`` reader and its presets) and for rows to score (``RawRowEncoder``, ``fined predict
--rows``).

``RawReading`` says how a log is read: the CSV layout, the time column and its format, and
for each feature the raw column it reads. A ``table`` job keeps it beside the prepared data
(``raw_columns.json``), so rows to score, given with the log's own column names, are read
and checked as the log was:

- categorical ids are strings or int64 (floats only when whole numbers; NaN, pandas'
  missing integer, is refused);
- numeric values are float64, nulls missing; ``inf`` is refused, naming the row;
- sequences are lists, or text split on the feature's delimiter;
- a column ``derive_from_time`` names is computed from the time column.

Each refusal is a FinedError naming the column (and the feature, where its name differs).
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field

from fined.config import StrictModel
from fined.data.datasets.columns import finite_numbers, parse_time, split_list
from fined.data.schema import FeatureKind
from fined.errors import FinedError

TimePart = Literal["hour_of_day", "weekday"]
FILE_NAME = "raw_columns.json"  # a prepared table's RawReading
_BLOCK_BYTES = 4 << 20  # CSV read block: memory per file stays a few blocks


class RawColumn(StrictModel):
    """One feature as the raw log holds it."""

    name: str  # the feature
    kind: FeatureKind
    column: str  # the raw column it reads (or the column derived from the time stamp)
    delimiter: str = "^"  # a sequence given as text is split on this

    def named(self) -> str:
        """``column 'uid' (feature 'user')``, or ``column 'ad'`` where the two agree."""
        own = f"column {self.column!r}"
        return own if self.column == self.name else f"{own} (feature {self.name!r})"


class RawReading(StrictModel):
    """How a log's rows are read: its CSV layout, its time column, and each feature's raw
    column."""

    columns: list[RawColumn]
    delimiter: str = Field(",", min_length=1, max_length=1)  # CSV field separator
    header: bool = True  # false: a CSV's columns are `column_names`, in order
    column_names: list[str] | None = None
    time: str | None = None  # the time column (read here only for derived columns)
    time_format: str = "unix"
    derive_from_time: dict[str, TimePart] = Field(default_factory=dict)  # column -> part

    def raw_columns(self) -> list[str]:
        """The raw columns the features read (the time column for derived ones), each once."""
        names = [c.column for c in self.columns if c.column not in self.derive_from_time]
        if self.time is not None and any(c.column in self.derive_from_time for c in self.columns):
            names.append(self.time)
        return list(dict.fromkeys(names))

    def csv_types(self, columns: list[str]) -> dict[str, pa.DataType]:
        """The type each of ``columns`` is read as from CSV: numeric features' float64, every
        other column text (ids are never guessed as floats; label and time are parsed)."""
        numeric = {c.column for c in self.columns if c.kind == "numeric"} - {self.time}
        return {c: pa.float64() if c in numeric else pa.string() for c in columns}

    def features(
        self, raw: pa.RecordBatch | pa.Table, row0: int, seconds: np.ndarray | None = None
    ) -> dict[str, pa.Array]:
        """Each feature's values in the standard form, from a batch of raw columns.
        ``row0``: the input row number of the batch's first row; ``seconds``: its time
        stamps, where the caller has parsed them (else read from the time column when a
        derived column needs them)."""
        out: dict[str, pa.Array] = {}
        for c in self.columns:
            if c.column in self.derive_from_time:
                if seconds is None:
                    seconds = self._seconds(raw)
                out[c.name] = pa.array(time_part(seconds, self.derive_from_time[c.column]))
                continue
            values = raw.column(c.column)
            if isinstance(values, pa.ChunkedArray):
                values = values.combine_chunks()
            try:
                out[c.name] = feature_values(c, values, row0)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                # A type no conversion handles (a Parquet struct or map column).
                raise FinedError(
                    f"{c.named()} has type {values.type}, which a {c.kind} feature cannot read"
                ) from None
        return out

    def _seconds(self, raw: pa.RecordBatch | pa.Table) -> np.ndarray:
        assert self.time is not None  # derive_from_time needs one (TableOptions checks)
        values = raw.column(self.time)
        if pa.types.is_timestamp(values.type):  # Parquet time stamps need no format
            parsed = pc.cast(pc.cast(values, pa.timestamp("s"), safe=False), pa.int64())
        else:
            parsed = parse_time(values, self.time_format, self.time)
        return pc.fill_null(parsed, 0).to_numpy(zero_copy_only=False)


def feature_values(c: RawColumn, values: pa.Array, row0: int) -> pa.Array:
    """One feature's raw column in the standard form; ``row0``: its first row's number."""
    if c.kind == "categorical":
        return as_ids(values, c.named())
    if c.kind == "numeric":
        return finite_numbers(_as_float(values, c.named()), c.named(), row0)
    return _as_sequence(values, c.delimiter)


def as_ids(values: pa.Array, named: str) -> pa.Array:
    """Categorical ids as string or int64 (floats only when whole numbers)."""
    t = values.type
    if pa.types.is_dictionary(t):
        return as_ids(values.dictionary_decode(), named)
    if t == pa.uint64():  # may exceed int64: as text, losslessly, in the form the user knows
        return pc.cast(values, pa.string())
    if pa.types.is_integer(t):
        return pc.cast(values, pa.int64())
    if pa.types.is_floating(t):
        try:
            return pc.cast(values, pa.int64())
        except pa.ArrowInvalid:
            if pc.any(pc.is_nan(values)).as_py():  # how pandas writes a missing integer id
                raise FinedError(
                    f"{named}: an id is NaN (pandas' missing value in a float column); write "
                    "the ids as integers with nulls (pandas Int64) or as text"
                ) from None
            raise FinedError(f"{named}: ids must be whole numbers or text") from None
    return pc.fill_null(pc.cast(values, pa.string()), "")


def _as_sequence(values: pa.Array, delimiter: str) -> pa.Array:
    """A list column as ``list<int64|string>``, or text split on ``delimiter``."""
    t = values.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        whole = pa.types.is_integer(t.value_type) and t.value_type != pa.uint64()
        item = pa.int64() if whole else pa.string()  # uint64 may exceed int64: as text
        return pc.cast(values, pa.list_(item))
    return split_list(values, delimiter)


def _as_float(values: pa.Array, named: str) -> pa.Array:
    try:
        return pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise FinedError(f"numeric {named}: a value is not a number") from None


def time_part(seconds: np.ndarray, part: TimePart) -> np.ndarray:
    if part == "hour_of_day":
        return seconds // 3600 % 24
    return (seconds // 86400 + 3) % 7  # Monday = 0; 1970-01-01 was a Thursday


# -- files ------------------------------------------------------------------------------------
def file_format(path: Path) -> str:
    """``parquet`` for a ``.parquet`` / ``.pq`` file, else ``csv``."""
    suffixes = [s.lower() for s in path.suffixes]
    return "parquet" if ".parquet" in suffixes or ".pq" in suffixes else "csv"


def read_batches(
    path: Path,
    columns: list[str],
    reading: RawReading,
    csv_types: dict[str, pa.DataType],
    chunk_rows: int,
    format: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The ``columns`` of a CSV or Parquet file (``format``: by its suffix when None), in
    batches: CSV in the log's layout (``reading``), each column read as ``csv_types`` says; a
    missing or doubled column is named with the columns the file has."""
    if not path.is_file():
        raise FinedError(f"{path}: no such file")
    if (format or file_format(path)) == "parquet":
        yield from _parquet_batches(path, columns, chunk_rows)
    else:
        yield from _csv_batches(path, columns, reading, csv_types)


def _check_columns(path: Path, needed: list[str], present: list[str]) -> None:
    twice = [c for c in needed if present.count(c) > 1]
    if twice:  # which of the two is meant cannot be told
        raise FinedError(f"{path}: column {twice[0]!r} appears more than once")
    missing = [c for c in needed if c not in present]
    if missing:
        raise FinedError(
            f"{path}: missing column {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; the file has: {', '.join(present)}"
        )


def _parquet_batches(path: Path, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise FinedError(f"{path}: not a readable Parquet file ({err})") from None
    _check_columns(path, columns, pf.schema_arrow.names)
    yield from pf.iter_batches(batch_size=chunk_rows, columns=columns)


def _csv_batches(
    path: Path, columns: list[str], reading: RawReading, csv_types: dict[str, pa.DataType]
) -> Iterator[pa.RecordBatch]:
    if reading.header:
        names, skip = csv_header(path, reading.delimiter), 1
    else:
        names, skip = list(reading.column_names or []), 0
    _check_columns(path, columns, names)
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=skip, block_size=_BLOCK_BYTES
            ),
            parse_options=pacsv.ParseOptions(delimiter=reading.delimiter),
            convert_options=pacsv.ConvertOptions(column_types=csv_types, include_columns=columns),
        )
        yield from reader
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        # Arrow says "column #3"; name it, so the message alone tells where to look.
        msg = re.sub(r"column #(\d+)", lambda m: f"column {names[int(m[1])]!r}", str(err))
        raise FinedError(f"{path}: {msg}") from None


def csv_header(path: Path, delimiter: str) -> list[str]:
    """Column names in the first line (compressed files too), stripped of spaces and BOM;
    text that is not UTF-8 is refused (Arrow's reader reads UTF-8 only)."""
    head = b""
    with pa.input_stream(str(path), compression="detect") as stream:
        while b"\n" not in head:
            chunk = stream.read(1 << 16)
            if not chunk:
                break
            head += chunk
    if not head.strip():
        raise FinedError(f"{path}: the file is empty (a header line was expected)")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FinedError(f"{path}: the file is UTF-16 text; save it as UTF-8")
    first = head.split(b"\n", 1)[0]
    try:
        line = first.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError as err:
        raise FinedError(
            f"{path}: not UTF-8 text (byte {first[err.start]:#04x} at offset {err.start} of "
            "the first line); save it as UTF-8"
        ) from None
    return [n.strip() for n in next(csv.reader([line], delimiter=delimiter), [])]
