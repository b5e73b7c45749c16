"""``fined data prepare``: two streaming passes from a raw source to encoded periods.

Pass 1 counts rows and ids per period, keeps the time stamps (8 bytes a row) for the held-out
cuts and a bounded sample of each numeric feature; rows that fall in no period are counted
by reason (and a missing or implausible time stamp stops the job unless the config says to
skip such rows). Between the passes the periods, holdout
cuts, append-only vocabularies and numeric transforms are fixed. Pass 2 encodes each chunk
and appends it to its period's Parquet file. Memory is bounded by the chunk size, the
vocabularies and the time stamps; no raw file is ever held whole.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fined.data.datasets import RawSource, open_source
from fined.data.encoding import RowEncoder, column, last_items
from fined.data.feature_map import FeatureInfo, FeatureMap, PeriodInfo
from fined.data.loader import footer_digest
from fined.data.numeric import BottomKSample, NumericTransform
from fined.data.periods import HoldoutCut, PeriodSplitter
from fined.data.schema import FeatureSpec, PrepareConfig, check_features
from fined.data.vocab import (
    OOV,
    PeriodCounts,
    Vocabulary,
    count_ids,
    grow_vocabulary,
    merge_counts,
)
from fined.errors import FinedError
from fined.io import atomic_write_json, atomic_write_text
from fined.outputs import read_marker, replaced_directory

Progress = Callable[[str, int], None]  # (stage, rows done so far)
_NUMERIC_SAMPLE = 200_000  # values kept per numeric feature and period to fit quantiles
_FLUSH_ROWS = 262_144  # rows buffered per period before a Parquet row group is written
# Encoded rows buffered over all periods: with wide rows (long histories) and many periods
# open at once, a row count alone let the buffers grow to GBs (a bucketed source feeds every
# period at a time). Past it the fullest period is flushed (a smaller row group, same rows).
_BUFFER_BYTES = 128 << 20
COMMAND = "data prepare"  # the owner named in a prepared directory's marker


@dataclass
class _Scan:
    """What pass 1 learns about the source."""

    rows: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    times: dict[int, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, PeriodCounts] = field(default_factory=dict)
    samples: dict[tuple[str, int], BottomKSample] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by reason


def prepare(config: PrepareConfig, out: str | Path, progress: Progress | None = None) -> FeatureMap:
    """Encode the source named by ``config`` into ``out`` (replaced atomically)."""
    source = open_source(config)
    try:
        return _prepare(source, config, out, progress)
    finally:
        source.close()


def ensure_prepared(
    config: PrepareConfig, out: str | Path, preparing: Callable[[], None] | None = None
) -> Path:
    """``out``, holding what ``config`` prepares: prepared now (``preparing`` called first)
    unless its marker names this very job; another job's output there is replaced."""
    out = Path(out)
    marker = read_marker(out) if out.is_dir() else None
    if marker is None or marker.get("job") != config.model_dump(mode="json"):
        if preparing is not None:
            preparing()
        prepare(config, out)
    return out


def _prepare(
    source: RawSource, config: PrepareConfig, out: str | Path, progress: Progress | None
) -> FeatureMap:
    check_features(source.features)
    spec = source.periods
    total = None
    if spec.by == "rows" and spec.n_periods is not None:
        total = sum(b.num_rows for b in source.batches(config.chunk_rows))
    splitter = PeriodSplitter(spec, total)

    job = {"job": config.model_dump(mode="json")}  # what made it: a run compares before reuse
    with replaced_directory(out, COMMAND, job) as tmp:
        scan = _scan(source, splitter, config, progress)
        keys = sorted(scan.rows)
        source_names = source.period_names()
        names = {k: splitter.name(k, source_names) for k in keys}
        splitter.check(keys, scan.rows, names)
        ordinal = {k: i for i, k in enumerate(keys)}
        cuts = {
            k: HoldoutCut.from_times(np.concatenate(scan.times.pop(k)), spec.holdout_fraction)
            for k in keys
        }
        vocabs = _grow_vocabularies(source.features, scan, ordinal)
        fit_keys = keys[: config.fit_periods]
        transforms = {
            f.name: NumericTransform.fit(f, _fit_sample(scan, f.name, fit_keys))
            for f in source.features
            if f.kind == "numeric"
        }
        encoder = RowEncoder(source.features, vocabs, transforms)
        periods = _write_periods(
            source, splitter, encoder, cuts, ordinal, names, scan.rows, tmp, config, progress
        )

        vocab_text = json.dumps({k: v.to_json() for k, v in vocabs.items()}, indent=2) + "\n"
        atomic_write_text(tmp / "vocab.json", vocab_text)
        fmap = FeatureMap(
            dataset=source.name,
            features=[_feature_info(f, vocabs, transforms) for f in source.features],
            periods=periods,
            user_key=config.user_key or source.user_key,
            holdout_fraction=spec.holdout_fraction,
            fit_periods=min(config.fit_periods, len(keys)),
            time_is_row_number=spec.by in ("rows", "key"),
            vocab_sha256=hashlib.sha256(vocab_text.encode()).hexdigest(),
            skipped_rows=dict(scan.skipped),
            source_notes=source.notes(),
        )
        for name, doc in source.extra_files().items():
            atomic_write_json(tmp / name, doc)
        fmap.save(tmp)
    return fmap


def _assign(
    batch: pa.RecordBatch, splitter: PeriodSplitter, row0: int
) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray, dict[str, int]]:
    """The rows of ``batch`` that fall in a period, their times and period keys, and how many
    rows were left out, by reason. ``row0``: the input row number of the batch's first row."""
    n = batch.num_rows
    spec = splitter.spec
    if spec.by == "rows":
        time, missing = np.arange(row0, row0 + n, dtype=np.int64), np.zeros(n, dtype=bool)
    else:
        col = column(batch, "time")
        missing = col.is_null().to_numpy(zero_copy_only=False)
        time = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    invalid = {
        "with no time stamp": missing,
        f"with a time stamp outside {splitter.window_text()}": splitter.implausible(time)
        & ~missing,
    }
    left_out = np.zeros(n, dtype=bool)
    dropped: dict[str, int] = {}
    for reason, mask in invalid.items():
        if not mask.any():
            continue
        if spec.invalid_time == "error":
            raise FinedError(_invalid_time(row0, mask, time, reason, splitter))
        dropped[reason] = int(mask.sum())
        left_out |= mask
    pkey = None
    if spec.by == "key":
        pkey = column(batch, "period_key").to_numpy(zero_copy_only=False)
    keys = splitter.keys(time, pkey)
    for reason, mask in splitter.outside(time).items():
        mask &= ~left_out
        if mask.any():
            dropped[reason] = int(mask.sum())
            left_out |= mask
    if left_out.any():
        keep = ~left_out
        batch, time, keys = batch.filter(pa.array(keep)), time[keep], keys[keep]
    return batch, time, keys, dropped


def _invalid_time(
    row0: int, mask: np.ndarray, time: np.ndarray, reason: str, splitter: PeriodSplitter
) -> str:
    i = int(np.flatnonzero(mask)[0])
    where = f"row {row0 + i + 1:,} of the input"
    if reason.startswith("with no"):
        what = "has no time stamp"
    else:
        when = str(np.datetime64(int(time[i]), "s")).replace("T", " ")
        what = (
            f"has time stamp {int(time[i])} ({when} UTC), outside the plausible range "
            f"{splitter.window_text()}; widen it with periods.earliest / periods.latest"
        )
    more = f" ({int(mask.sum()):,} such rows in this chunk)" if mask.sum() > 1 else ""
    return f"{where} {what}{more}; or leave such rows out with periods.invalid_time: skip"


def _scan(
    source: RawSource, splitter: PeriodSplitter, config: PrepareConfig, progress: Progress | None
) -> _Scan:
    scan = _Scan()
    row0 = 0
    for raw in source.batches(config.chunk_rows):
        batch, time, keys, dropped = _assign(raw, splitter, row0)
        row0 += raw.num_rows
        for reason, count in dropped.items():
            scan.skipped[reason] += count
        present = np.unique(keys)
        for k in present:
            sel = keys == k
            scan.rows[int(k)] += int(sel.sum())
            scan.times[int(k)].append(time[sel])
        for f in source.features:
            col = column(batch, f.name)
            if f.kind == "numeric":
                values = col.to_numpy(zero_copy_only=False).astype(np.float64)
                for k in present:
                    sample = scan.samples.setdefault(
                        (f.name, int(k)), BottomKSample(_NUMERIC_SAMPLE, int(k))
                    )
                    sample.add(values[keys == k])
                continue
            if f.kind == "sequence":
                items, row, _ = last_items(col, f.max_len)
                part = count_ids(items, keys[row])
            else:
                part = count_ids(col, keys)
            scan.counts.setdefault(f.vocab or f.name, PeriodCounts()).add(part)
        if progress:
            progress("scan", row0)
    return scan


def _grow_vocabularies(
    features: list[FeatureSpec], scan: _Scan, ordinal: dict[int, int]
) -> dict[str, Vocabulary]:
    spec = {f.name: f for f in features}
    vocabs = {}
    for owner in [f.name for f in features if f.kind != "numeric" and f.vocab is None]:
        # Each table of counts is let go once its vocabulary stands (they are the largest
        # state of the scan, and pass 2 does not need them).
        counts = scan.counts.pop(owner).frame() if owner in scan.counts else merge_counts([])
        counts = counts.with_columns(
            pl.col("period").replace_strict(
                list(ordinal), list(ordinal.values()), return_dtype=pl.Int64
            )
        )
        f = spec[owner]
        buckets = f.hash_buckets if f.max_vocab is not None else 0
        vocabs[owner] = grow_vocabulary(counts, len(ordinal), f.min_count, f.max_vocab, buckets)
    return vocabs


def _fit_sample(scan: _Scan, name: str, fit_keys: list[int]) -> np.ndarray:
    parts = [scan.samples[(name, k)].values for k in fit_keys if (name, k) in scan.samples]
    return np.concatenate(parts) if parts else np.empty(0)


def _feature_info(
    f: FeatureSpec, vocabs: dict[str, Vocabulary], transforms: dict[str, NumericTransform]
) -> FeatureInfo:
    if f.kind == "numeric":
        t = transforms[f.name]
        n = t.vocab_size
        return FeatureInfo(f.name, f.kind, f.source, f.name, n, [], 1, t.to_json(), f.min_count)
    vocab = vocabs[f.vocab or f.name]
    max_len = f.max_len if f.kind == "sequence" else 1
    return FeatureInfo(
        f.name,
        f.kind,
        f.source,
        f.vocab or f.name,
        len(vocab),
        list(vocab.size_by_period),
        max_len,
        None,
        f.min_count,
    )


@dataclass
class _PeriodWriter:
    """Buffers encoded rows of one period and appends them to its Parquet file."""

    path: Path
    cut: HoldoutCut
    row_group_rows: int
    writer: pq.ParquetWriter | None = None
    buffered: list[pa.Table] = field(default_factory=list)
    buffered_rows: int = 0
    buffered_bytes: int = 0
    ties_seen: int = 0
    rows: int = 0
    positives: int = 0
    holdout_rows: int = 0
    holdout_positives: int = 0
    time_min: int = np.iinfo(np.int64).max
    time_max: int = np.iinfo(np.int64).min
    new_ids: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(
        self, table: pa.Table, label: np.ndarray, holdout: np.ndarray, time: np.ndarray
    ) -> None:
        self.rows += len(label)
        self.positives += int(label.sum())
        self.holdout_rows += int(holdout.sum())
        self.holdout_positives += int(label[holdout].sum())
        self.time_min = min(self.time_min, int(time.min()))
        self.time_max = max(self.time_max, int(time.max()))
        self.buffered.append(table)
        self.buffered_rows += table.num_rows
        self.buffered_bytes += table.nbytes
        if self.buffered_rows >= _FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffered)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table, row_group_size=self.row_group_rows)
        self.buffered, self.buffered_rows, self.buffered_bytes = [], 0, 0

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()

    def digest(self) -> str:
        with open(self.path, "rb") as fh:
            return footer_digest(fh)


def _write_periods(
    source: RawSource,
    splitter: PeriodSplitter,
    encoder: RowEncoder,
    cuts: dict[int, HoldoutCut],
    ordinal: dict[int, int],
    names: dict[int, str],
    expected_rows: dict[int, int],
    out: Path,
    config: PrepareConfig,
    progress: Progress | None,
) -> list[PeriodInfo]:
    (out / "periods").mkdir()
    writers = {
        k: _PeriodWriter(out / "periods" / f"{i:03d}.parquet", cuts[k], config.row_group_rows)
        for k, i in ordinal.items()
    }
    tracked = [f for f in source.features if f.kind == "categorical"]
    row0 = 0
    for raw in source.batches(config.chunk_rows):
        batch, time, keys, _ = _assign(raw, splitter, row0)
        row0 += raw.num_rows
        label = column(batch, "label").to_numpy(zero_copy_only=False).astype(np.int8)
        encoded = encoder.encode(batch)
        for k in np.unique(keys):
            w = writers[int(k)]
            sel = np.flatnonzero(keys == k)
            hold, w.ties_seen = w.cut.mask(time[sel], w.ties_seen)
            take = pa.array(sel)
            table = pa.table(
                {
                    "label": pa.array(label[sel]),
                    "time": pa.array(time[sel]),
                    "holdout": pa.array(hold),
                    **{name: arr.take(take) for name, arr in encoded.items()},
                }
            )
            p = ordinal[int(k)]
            for f in tracked:
                ids = encoded[f.name].to_numpy()[sel]
                known = encoder.vocab_of(f).size_by_period[p - 1] if p > 0 else 2
                w.new_ids[f.name] += int(np.count_nonzero((ids >= known) | (ids == OOV)))
            w.add(table, label[sel], hold, time[sel])
        while sum(w.buffered_bytes for w in writers.values()) > _BUFFER_BYTES:
            max(writers.values(), key=lambda w: w.buffered_bytes).flush()
        if progress:
            progress("encode", row0)
    infos = []
    for k, i in ordinal.items():
        w = writers[k]
        w.close()
        if w.rows != expected_rows[k] or w.holdout_rows != cuts[k].holdout_rows:
            raise FinedError(
                f"the source yielded different rows on its second pass (period {names[k]}); "
                "adapters must be deterministic"
            )
        infos.append(
            PeriodInfo(
                index=i,
                name=names[k],
                file=f"periods/{w.path.name}",
                rows=w.rows,
                positives=w.positives,
                holdout_rows=w.holdout_rows,
                holdout_positives=w.holdout_positives,
                time_min=w.time_min,
                time_max=w.time_max,
                new_id_share={n: c / w.rows for n, c in w.new_ids.items()},
                footer_sha256=w.digest(),
            )
        )
    return infos
