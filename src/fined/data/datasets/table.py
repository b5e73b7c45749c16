"""The generic ``table`` adapter: any CSV or Parquet files described by options.

Every table-shaped public format (Criteo, Avazu, the joined TaobaoAd_x1 CSV, Ele.me) is a
preset over the one reader here (see ``presets.py``): it only fills in the options below,
the default features and the default periods.

Reading streams with bounded memory: ``pyarrow.csv.open_csv`` with an explicit type for every
column read (so that ids are never guessed as floats, and a late odd value cannot break type
inference of the first block), or ``ParquetFile.iter_batches``; the columns and the feature
values are read by ``reading.py``, the path rows to score take too (the job's ``RawReading``
is kept beside the prepared data, ``raw_columns.json``). Files are read in sorted
(natural) order, so ``D2_0.csv`` comes before ``D10_0.csv``, and each call of ``batches()``
yields the same rows in the same order. A directory's hidden files (``.DS_Store``, editors'
swap files: names that start with a dot) are never read; a file of the other format among
the files read (a ``.parquet`` beside CSVs) is refused by name.

Column conventions of the standardized batches:

- categorical ids from text stay strings; an empty field is the id ``""`` (a category of its
  own, "missing"), never null. Parquet integer ids stay int64 (nulls kept), float ids must be
  whole numbers.
- numeric features are float64; empty fields and ``NULL``/``NaN`` are nulls; ``inf`` is
  refused (naming the row), as no transform fitted on it means anything.
- sequences given as text are split on the feature's ``delimiter`` when the feature sets one,
  else on the option ``list_delimiter``; empty tokens are dropped.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from fined.config import StrictModel, parse_model
from fined.data.datasets import register
from fined.data.datasets.columns import binary_label, parse_time
from fined.data.datasets.reading import (
    FILE_NAME,
    RawColumn,
    RawReading,
    TimePart,
    file_format,
    read_batches,
)
from fined.data.datasets.source import BaseSource
from fined.data.schema import FeatureSpec, PathText, PeriodSpec, PrepareConfig, check_features
from fined.errors import FinedError

_CALENDAR = ("hour", "day", "week", "month", "boundaries")


class TableOptions(StrictModel):
    """``options`` of a ``table`` job; the presets fill the same model."""

    path: PathText  # a file, a directory, or a glob
    format: Literal["csv", "parquet"] | None = None  # None: from the file suffix
    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True
    column_names: list[str] | None = None  # required when header is false
    label: str = "label"
    time: str | None = None  # None: time is the running row number
    # unix | unix_ms | yymmddhh | a strptime format (UTC, or the offset %z reads)
    time_format: str = "unix"
    period_from_file: str | None = None  # regex, one group: integer period key in a file name
    period_name: str = "{key}"  # display name of a file period key, e.g. "D{key}"
    list_delimiter: str = Field("^", min_length=1)  # for sequence features read from text
    derive_from_time: dict[str, TimePart] = Field(default_factory=dict)  # extra columns
    dir_glob: str = "*"  # files taken from `path` when it is a directory (hidden ones never)

    @model_validator(mode="after")
    def _check(self) -> TableOptions:
        if not self.header and not self.column_names:
            raise ValueError("header: false needs `column_names`")
        if self.period_from_file is not None:
            try:
                groups = re.compile(self.period_from_file).groups
            except re.error as err:
                raise ValueError(f"period_from_file: invalid regex ({err})") from None
            if groups != 1:
                raise ValueError("period_from_file: the regex needs exactly one group")
        if self.derive_from_time and self.time is None:
            raise ValueError("derive_from_time needs a `time` column")
        try:
            self.period_name.format(key=0)
        except (KeyError, IndexError, ValueError):
            raise ValueError("period_name: use {key} for the period key, e.g. 'D{key}'") from None
        return self


def _natural_key(path: Path) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def list_files(path: str, dir_glob: str) -> list[Path]:
    """The files a ``path`` option names, in natural sorted order; none is a FinedError."""
    p = Path(path).expanduser()
    if glob.has_magic(path):
        files = [Path(f) for f in glob.glob(str(p)) if Path(f).is_file()]
        if not files:
            raise FinedError(f"{path}: no file matches")
    elif p.is_dir():
        # Hidden files are the system's or an editor's (.DS_Store), never data; glob.glob
        # above leaves them out too.
        files = [f for f in p.glob(dir_glob) if f.is_file() and not f.name.startswith(".")]
        if not files:
            raise FinedError(f"{path}: no file matching {dir_glob!r} in this directory")
    elif p.is_file():
        files = [p]
    else:
        raise FinedError(f"{path}: no such file or directory")
    return sorted(files, key=_natural_key)


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Regroup a stream of batches into batches of ``rows`` rows (the last one shorter)."""
    buf: list[pa.RecordBatch] = []
    n = 0
    for batch in batches:
        buf.append(batch)
        n += batch.num_rows
        if n < rows:
            continue
        table = pa.Table.from_batches(buf).combine_chunks()
        full = n - n % rows
        yield from table.slice(0, full).to_batches(max_chunksize=rows)
        buf, n = table.slice(full).to_batches(), n - full
    if n:
        yield from pa.Table.from_batches(buf).combine_chunks().to_batches()


class TableSource(BaseSource):
    """Rows of CSV/Parquet files, standardized as ``base.py`` describes."""

    def __init__(
        self,
        name: str,
        options: TableOptions,
        features: list[FeatureSpec],
        periods: PeriodSpec,
        user_key: str | None,
    ) -> None:
        super().__init__(features, periods)
        self.name = name
        self.options = options
        self.user_key = user_key
        check_features(features)
        names = {f.name for f in features}
        if user_key is not None and user_key not in names:
            raise FinedError(f"user_key: no feature named {user_key!r}")
        leak = [f.name for f in features if f.raw_column == options.label]
        if leak:
            raise FinedError(
                f"features.{leak[0]}: reads the label column {options.label!r}; a feature made "
                "of the label leaks it into the model"
            )
        if options.time is None and periods.by in _CALENDAR:
            raise FinedError(
                f"{name}: periods.by: {periods.by} needs a time column (options.time); "
                "without one use by: rows"
            )
        if periods.by == "key" and options.period_from_file is None:
            raise FinedError(f"{name}: periods.by: key needs options.period_from_file")
        self.files = list_files(options.path, options.dir_glob)
        self.format = options.format or file_format(self.files[0])
        self._check_one_format()
        self.keys = {f: self._period_key(f) for f in self.files}
        self.reading = RawReading(
            columns=[
                RawColumn(name=f.name, kind=f.kind, column=f.raw_column,
                          delimiter=f.delimiter if "delimiter" in f.model_fields_set
                          else options.list_delimiter)
                for f in features
            ],
            delimiter=options.delimiter, header=options.header,
            column_names=options.column_names, time=options.time,
            time_format=options.time_format, derive_from_time=options.derive_from_time,
        )  # fmt: skip

        # Raw columns to read, each once, and the type each is read as from CSV (label and
        # time stay text: their parsers take text).
        needed = [options.label, *([options.time] if options.time else [])]
        self.needed = list(dict.fromkeys([*needed, *self.reading.raw_columns()]))
        self.csv_types = self.reading.csv_types(self.needed)

    def extra_files(self) -> dict[str, Any]:
        """How the log's columns were read: rows to score are read the same way."""
        return {FILE_NAME: self.reading.model_dump(mode="json")}

    def _check_one_format(self) -> None:
        """Every file read is of the job's format: a stray file of the other one (a
        ``.parquet`` beside CSVs) would be read as garbage."""
        for path in self.files:
            suffixes = {s.lower() for s in path.suffixes}
            known = suffixes & {".csv", ".tsv", ".parquet", ".pq"}  # a suffix that says it
            if known and file_format(path) != self.format:
                raise FinedError(
                    f"{path}: a {file_format(path)} file among the {self.format} files of "
                    f"{self.options.path}; move it away (or narrow options.dir_glob)"
                )

    def _period_key(self, path: Path) -> int | None:
        if self.options.period_from_file is None:
            return None
        m = re.search(self.options.period_from_file, path.name)
        if m is None or not m.group(1).lstrip("-").isdigit():
            raise FinedError(
                f"{path}: no integer period key in the file name "
                f"(options.period_from_file: {self.options.period_from_file!r})"
            )
        return int(m.group(1))

    def period_names(self) -> dict[int, str]:
        keys = sorted({k for k in self.keys.values() if k is not None})
        return {k: self.options.period_name.format(key=k) for k in keys}

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        return _rebatch(self._standard_batches(chunk_rows), chunk_rows)

    def _standard_batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        row = 0  # running row number over all files: the time of sources without one
        schema = None  # every batch must match the first (Parquet files may disagree)
        for path in self.files:
            raws = read_batches(
                path, self.needed, self.reading, self.csv_types, chunk_rows, self.format
            )
            for raw in raws:
                try:
                    batch = self._standardize(raw, row, self.keys[path])
                except FinedError as err:
                    raise FinedError(f"{path}: {err}") from None
                schema = schema or batch.schema
                if not batch.schema.equals(schema):
                    bad = next(f for f in batch.schema if f != schema.field(f.name))
                    raise FinedError(
                        f"{path}: column {bad.name!r} is {bad.type}, "
                        f"earlier rows had {schema.field(bad.name).type}"
                    )
                yield batch
                row += raw.num_rows
        if row == 0:  # else blamed on the period settings ("no rows fall into any period")
            only = " (a header only)" if self.format == "csv" and self.options.header else ""
            raise FinedError(f"{self.options.path}: no rows{only}")

    def _standardize(self, raw: pa.RecordBatch, row: int, key: int | None) -> pa.RecordBatch:
        opts = self.options
        n = raw.num_rows
        cols: dict[str, pa.Array] = {"label": binary_label(raw.column(opts.label), opts.label)}
        if opts.time is None:
            time = pa.array(np.arange(row, row + n, dtype=np.int64))
        else:
            time = self._parse_time(raw.column(opts.time), opts.time)
        cols["time"] = time
        if key is not None:
            cols["period_key"] = pa.array(np.full(n, key, dtype=np.int64))
        seconds = pc.fill_null(time, 0).to_numpy(zero_copy_only=False)  # nulls: left out later
        cols.update(self.reading.features(raw, row, seconds))
        return pa.RecordBatch.from_pydict(cols)

    def _parse_time(self, values: pa.Array, column: str) -> pa.Array:
        if pa.types.is_timestamp(values.type):  # Parquet time stamps need no format
            return pc.cast(pc.cast(values, pa.timestamp("s"), safe=False), pa.int64())
        return parse_time(values, self.options.time_format, column)


def default_periods(options: TableOptions) -> PeriodSpec:
    """File keys if the names carry them, days if there is a time column, else 10 row blocks."""
    if options.period_from_file is not None:
        return PeriodSpec(by="key")
    if options.time is not None:
        return PeriodSpec(by="day")
    return PeriodSpec(by="rows", n_periods=10)


@register("table", TableOptions)
def build_table(config: PrepareConfig) -> TableSource:
    """Any CSV/Parquet files; ``features`` must be given (a table has no default schema)."""
    options = parse_model(TableOptions, config.options, "options")
    if not config.features:
        raise FinedError(
            "dataset table: `features` is required (list each column as a feature: "
            "name, kind, and column where the raw name differs)"
        )
    periods = config.periods or default_periods(options)
    return TableSource("table", options, config.features, periods, config.user_key)
