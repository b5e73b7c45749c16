"""Taobao display-ad raw tables (Tianchi dataset 56), registered as ``taobao_ad_raw``.

One output row per impression of ``raw_sample.csv`` (label ``clk``, time ``time_stamp``), joined
with the ad (``ad_feature.csv``), the user profile (``user_profile.csv``) and the user's
behaviour history from ``behavior_log.csv``, taken **strictly before** the impression's time
stamp (the most recent ``max_len`` events, oldest first).

Memory stays bounded although the behaviour log has ~700 M rows and raw_sample ~26 M: on the
first call to ``batches()`` both are streamed once into ``n_buckets`` Parquet files by a hash
of the user id, in a work directory the source owns (removed by ``close()`` or when the source
is garbage-collected). Each bucket (1/N of the users) is then loaded alone and the histories
are gathered with ``np.searchsorted`` and index arithmetic (``history.events_before``).
Later calls reuse the buckets, so every call yields the same rows in the same order: bucket
by bucket, within a bucket in raw_sample's file order.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import Field

from fined.config import StrictModel, parse_model
from fined.data.datasets import register
from fined.data.datasets.columns import binary_label
from fined.data.datasets.history import events_before
from fined.data.datasets.source import BaseSource
from fined.data.schema import FeatureSpec, PeriodSpec, PrepareConfig, check_features
from fined.errors import FinedError

BTAGS = ("pv", "cart", "fav", "buy")
PROFILE = (
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
)
AD = ("cate_id", "campaign_id", "customer", "brand")
CHINA = 8 * 3600  # Taobao's calendar (hour, weekday) is China time, UTC+8

# Columns read from each file, with their Arrow types; the file may hold more.
I64 = pa.int64()
TABLES: dict[str, dict[str, pa.DataType]] = {
    "raw_sample.csv": {
        "user": I64,
        "time_stamp": I64,
        "adgroup_id": I64,
        "pid": pa.string(),
        "clk": I64,
    },
    "ad_feature.csv": {"adgroup_id": I64, **dict.fromkeys(AD, I64), "price": pa.float64()},
    "user_profile.csv": {"userid": I64, **dict.fromkeys(PROFILE, I64)},
    "behavior_log.csv": {
        "user": I64,
        "time_stamp": I64,
        "btag": pa.string(),
        "cate": I64,
        "brand": I64,
    },
}
# Behaviour events as stored in the buckets (btag as its index in BTAGS).
EVENTS = pa.schema({**TABLES["behavior_log.csv"], "btag": pa.int8()})
REQUIRED = {
    "raw_sample.csv": ("user", "time_stamp", "adgroup_id", "clk"),
    "ad_feature.csv": ("adgroup_id",),
    "user_profile.csv": ("userid",),
    "behavior_log.csv": ("user", "time_stamp", "btag"),
}  # no empty values allowed


class Options(StrictModel):
    """``options`` of a ``taobao_ad_raw`` prepare job."""

    path: Path  # directory with the four CSV files
    max_len: int = Field(50, ge=1)  # events kept per history (the most recent ones)
    n_buckets: int | None = Field(None, ge=1)  # None: one bucket per `bucket_mb` of CSV input
    bucket_mb: int = Field(256, ge=1)  # CSV MB (log + samples) per bucket; peak RAM ~6x
    work_dir: Path | None = None  # where the bucket files go; None: the system temp dir
    block_mb: float = Field(64, gt=0)  # CSV read block size


def default_features(max_len: int) -> list[FeatureSpec]:
    """User profile, ad, context and behaviour-history features of the raw tables."""

    def spec(
        name: str, kind: str = "categorical", source: str = "context", **extra: object
    ) -> FeatureSpec:
        return FeatureSpec.model_validate({"name": name, "kind": kind, "source": source, **extra})

    history: dict[str, Any] = {"kind": "sequence", "source": "user", "max_len": max_len}
    return [
        *[spec(n, source="user") for n in ("userid", *PROFILE)],
        *[spec(n, source="item") for n in ("adgroup_id", *AD)],
        spec("price", "numeric", "item", transform="bucketize"),
        *[spec(n) for n in ("pid", "hour", "weekday")],
        spec("hist_cate", vocab="cate_id", **history),  # ids shared with the ad's category
        spec("hist_brand", vocab="brand", **history),
        spec("hist_btag", **history),
    ]


# Every column the source can emit; a feature picks one by `FeatureSpec.raw_column`.
COLUMNS = tuple(f.name for f in default_features(1))


def _header(path: Path, file: str) -> list[str]:
    """Column names of a CSV file, stripped (user_profile's last name ends in a space)."""
    if not path.is_file():
        raise FinedError(f"{path}: no such file (the taobao_ad_raw directory needs {file})")
    with path.open(newline="", encoding="utf-8-sig") as f:
        names = [n.strip() for n in next(csv.reader(f), [])]
    missing = [c for c in TABLES[file] if c not in names]
    if missing:
        raise FinedError(f"{path}: missing column(s) {', '.join(missing)} (header: {names})")
    return names


def _read_csv(path: Path, names: list[str], block_mb: float) -> Iterator[pa.RecordBatch]:
    """Stream the needed columns of a CSV with explicit types; bad values are a FinedError."""
    types = TABLES[path.name]
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=1, block_size=int(block_mb * 2**20)
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=list(types),
                null_values=["", "NULL"],
                strings_can_be_null=True,
            ),
        )
        for batch in reader:
            for col in REQUIRED.get(path.name, ()):
                if batch.column(col).null_count:
                    raise FinedError(f"{path}: column {col!r} has empty value(s)")
            yield batch
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        # Arrow says "column #3"; name it, so the message alone tells where to look.
        msg = re.sub(r"column #(\d+)", lambda m: f"column {names[int(m[1])]!r}", str(err))
        raise FinedError(f"{path}: {msg}") from None


def _bucket_of(user: pa.Array, n: int) -> np.ndarray:
    """Bucket of each user id: a multiplicative hash, so id ranges spread evenly."""
    u = user.to_numpy().astype(np.uint64)
    return ((u * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)) % np.uint64(n)


class TaobaoAdRawSource(BaseSource):
    """The raw Taobao tables joined into impressions with strictly-past behaviour histories."""

    name = "taobao_ad_raw"

    def __init__(
        self,
        options: Options,
        features: list[FeatureSpec],
        periods: PeriodSpec,
        user_key: str | None = "userid",
    ) -> None:
        super().__init__(features, periods)
        self.options = options
        self.user_key = user_key
        unknown = [f.name for f in features if f.raw_column not in COLUMNS]
        if unknown:
            raise FinedError(
                f"features {', '.join(unknown)}: taobao_ad_raw has no such column "
                f"(known: {', '.join(COLUMNS)})"
            )
        self._headers = {file: _header(options.path / file, file) for file in TABLES}
        self._dir: Path | None = None
        self._n = 0  # number of buckets, set by _partition
        self._cleanup: weakref.finalize | None = None

    # -- preparation: partition the two big tables by user ------------------------------
    def _partition(self) -> Path:
        if self._dir is not None:
            return self._dir
        opts = self.options
        size = sum((opts.path / f).stat().st_size for f in ("raw_sample.csv", "behavior_log.csv"))
        n = opts.n_buckets or max(1, math.ceil(size / (opts.bucket_mb << 20)))
        work = Path(tempfile.mkdtemp(prefix="fined-taobao-", dir=opts.work_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, work, ignore_errors=True)
        try:
            users: list[np.ndarray] = []
            if not self._split("raw_sample.csv", work, n, self._samples(users)):
                raise FinedError(f"{opts.path / 'raw_sample.csv'}: no rows")
            self._split("behavior_log.csv", work, n, self._events(np.unique(np.concatenate(users))))
        except BaseException:
            self.close()
            raise
        self._dir, self._n = work, n
        return work

    def _split(
        self, file: str, work: Path, n: int, convert: Callable[[pa.RecordBatch], pa.RecordBatch]
    ) -> bool:
        """Stream ``file`` into ``n`` Parquet buckets by user; False when it has no rows."""
        writers: list[pq.ParquetWriter] = []
        try:
            for batch in _read_csv(
                self.options.path / file, self._headers[file], self.options.block_mb
            ):
                batch = convert(batch)
                if not writers:
                    writers = [
                        pq.ParquetWriter(work / f"{file}.{b}.parquet", batch.schema)
                        for b in range(n)
                    ]
                bucket = _bucket_of(batch.column("user"), n)
                order = np.argsort(bucket, kind="stable")  # keeps file order inside a bucket
                bounds = np.searchsorted(bucket[order], np.arange(n + 1))
                batch = batch.take(pa.array(order))
                for b in range(n):
                    if bounds[b + 1] > bounds[b]:
                        writers[b].write_batch(batch.slice(bounds[b], bounds[b + 1] - bounds[b]))
        finally:
            for w in writers:
                w.close()
        return bool(writers)

    @staticmethod
    def _samples(users: list[np.ndarray]) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
        """Converter for raw_sample batches: validate the label, collect the users."""

        def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
            label = binary_label(batch.column("clk"), "clk")
            users.append(np.unique(batch.column("user").to_numpy()))
            return batch.set_column(batch.schema.get_field_index("clk"), "clk", label)

        return convert

    @staticmethod
    def _events(users: np.ndarray) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
        """Converter for log batches: btag as a small code, only users with impressions."""
        value_set = pa.array(users)
        tags = pa.array(BTAGS)

        def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
            code = pc.index_in(batch.column("btag"), value_set=tags)
            if code.null_count:
                bad = batch.column("btag").filter(pc.is_null(code))[0]
                raise FinedError(
                    f"behavior_log.csv: column 'btag': unknown value {bad} "
                    f"(expected one of {', '.join(BTAGS)})"
                )
            batch = batch.set_column(
                batch.schema.get_field_index("btag"), "btag", pc.cast(code, pa.int8())
            )
            return batch.filter(pc.is_in(batch.column("user"), value_set=value_set))

        return convert

    # -- the rows ------------------------------------------------------------------------
    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """Impressions bucket by bucket, in chunks of at most ``chunk_rows`` rows."""
        work = self._partition()
        ads, profiles = self._small("ad_feature.csv"), self._small("user_profile.csv")
        for b in range(self._n):
            imp = pq.read_table(work / f"raw_sample.csv.{b}.parquet")
            if imp.num_rows == 0:
                continue
            log_file = work / f"behavior_log.csv.{b}.parquet"  # absent: the log has no rows
            ev = pq.read_table(log_file) if log_file.exists() else EVENTS.empty_table()
            yield from self._bucket(imp, ev, ads, profiles, chunk_rows)

    def _small(self, file: str) -> pa.Table:
        """A small table (ads, profiles), read whole; the first row of a repeated key wins."""
        schema = pa.schema(list(TABLES[file].items()))
        batches = _read_csv(self.options.path / file, self._headers[file], self.options.block_mb)
        return pa.Table.from_batches(list(batches), schema=schema)

    def _bucket(
        self, imp: pa.Table, ev: pa.Table, ads: pa.Table, profiles: pa.Table, chunk_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """One bucket's impressions, in file order, joined with ads, profiles and histories."""
        # Each impression's events strictly before it, the last max_len, oldest first; ties
        # keep file order (the buckets keep it and the sort is stable): the same rows each call.
        offsets, events = events_before(
            imp["user"].to_numpy(),
            imp["time_stamp"].to_numpy(),
            ev["user"].to_numpy(),
            ev["time_stamp"].to_numpy(),
            self.options.max_len,
        )
        # Small-table joins by key lookup (index_in keeps the impression order; no match: null).
        ad_rows = ads.take(pc.index_in(imp["adgroup_id"], value_set=ads["adgroup_id"]))
        prof_rows = profiles.take(pc.index_in(imp["user"], value_set=profiles["userid"]))
        local = imp["time_stamp"].to_numpy() + CHINA
        cols: dict[str, pa.Array | pa.ChunkedArray] = {
            "label": imp["clk"],
            "time": imp["time_stamp"],
            "userid": imp["user"],
            **{c: prof_rows[c] for c in PROFILE},
            "adgroup_id": imp["adgroup_id"],
            **{c: ad_rows[c] for c in AD},
            "price": ad_rows["price"],
            "pid": imp["pid"],
            "hour": pa.array(local // 3600 % 24),
            "weekday": pa.array((local // 86400 + 3) % 7),  # 1970-01-01 was a Thursday
        }
        flat = pa.table(cols).combine_chunks().to_batches()[0]  # one batch: plain Arrays
        ev_cols = {c: ev[c].combine_chunks() for c in ("cate", "brand", "btag")}
        tags = pa.array(BTAGS)

        for lo in range(0, imp.num_rows, chunk_rows):
            hi = min(lo + chunk_rows, imp.num_rows)
            idx = pa.array(events[offsets[lo] : offsets[hi]])
            lists = pa.array((offsets[lo : hi + 1] - offsets[lo]).astype(np.int32))
            values = {c: flat[c].slice(lo, hi - lo) for c in flat.schema.names}
            values["hist_cate"] = pa.ListArray.from_arrays(lists, ev_cols["cate"].take(idx))
            values["hist_brand"] = pa.ListArray.from_arrays(lists, ev_cols["brand"].take(idx))
            btag = tags.take(ev_cols["btag"].take(idx))
            values["hist_btag"] = pa.ListArray.from_arrays(lists, btag)
            names = ["label", "time", *(f.raw_column for f in self.features)]
            yield pa.RecordBatch.from_arrays(
                [values[c] for c in names],
                names=["label", "time", *(f.name for f in self.features)],
            )

    def close(self) -> None:
        """Remove the bucket files now (they are also removed when the source is collected)."""
        if self._cleanup is not None:
            self._cleanup()
        self._dir = None


@register("taobao_ad_raw", Options)
def build(config: PrepareConfig) -> TaobaoAdRawSource:
    """Taobao display ads, the four raw Tianchi tables, behaviours joined strictly before each
    impression: by day in China time."""
    options = parse_model(Options, config.options, "options")
    features = config.features or default_features(options.max_len)
    check_features(features)
    periods = config.periods or PeriodSpec(by="day", utc_offset_hours=8)
    return TaobaoAdRawSource(options, features, periods, config.user_key or "userid")
