"""Taobao display-ad raw tables (Tianchi dataset 56), registered as ``taobao_ad_raw``.

One output row per impression of ``raw_sample.csv`` (label ``clk``, time ``time_stamp``), joined
with the ad (``ad_feature.csv``), the user profile (``user_profile.csv``) and the user's
behaviour history from ``behavior_log.csv``, taken **strictly before** the impression's time
stamp (the most recent ``max_len`` events, oldest first).

Memory stays bounded although the behaviour log has ~700 M rows and raw_sample ~26 M: on the
first call to ``batches()`` both are streamed once into ``n_buckets`` Parquet files by a hash
of the user id, in a work directory the source owns (removed by ``close()`` or when the source
is garbage-collected; one a killed process left is removed by the next source to start:
``fined.io.spill_directory``). Each bucket (1/N of the users) is then loaded alone and the
histories are gathered with ``np.searchsorted`` and index arithmetic
(``history.events_before``).
Later calls reuse the buckets, so every call yields the same rows in the same order: bucket
by bucket, within a bucket in raw_sample's file order.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pydantic import Field

from fined.config import StrictModel, parse_model
from fined.data.datasets import register
from fined.data.datasets.columns import binary_label, finite_numbers
from fined.data.datasets.history import SortedEvents
from fined.data.datasets.source import BaseSource
from fined.data.schema import FeatureSpec, PeriodSpec, PrepareConfig, check_features
from fined.errors import FinedError
from fined.io import spill_directory

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
# The two big tables as spilled to the bucket files: fixed-size records, appended in file
# order (no per-file writer state, so the number of buckets costs no memory).
IMPRESSION = np.dtype(
    [("user", "<i8"), ("time", "<i8"), ("adgroup", "<i8"), ("pid", "<i4"), ("clk", "i1")]
)  # pid: index into the pids seen (-1: none)
EVENT = np.dtype(
    [
        ("rank", "<i4"),
        ("time", "<i8"),
        ("cate", "<i8"),
        ("brand", "<i8"),
        ("btag", "i1"),
        ("nulls", "u1"),
    ]
)  # rank: the user's index among the users with impressions; btag: index in BTAGS
_HISTORY_ENTRIES = 1 << 21  # history entries per yielded chunk (the rows' widest part)
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
    # CSV MB (log + samples) per bucket: a bucket's events are held and sorted at once
    # (~3x its CSV size); the count of buckets costs no memory
    bucket_mb: int = Field(64, ge=1)
    work_dir: Path | None = None  # where the bucket files go; None: the system temp dir
    # CSV read block size: Arrow's reader parses blocks ahead of the consumer, so the peak
    # while partitioning follows it (72 M log rows: 2.7 GB at 64 MB, 0.9 GB at 16 MB)
    block_mb: float = Field(16, gt=0)


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


def _bucket_of(user: np.ndarray, n: int) -> np.ndarray:
    """Bucket of each user id: a multiplicative hash, so id ranges spread evenly."""
    mixed = (user.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return mixed % np.uint64(n)


def _append(prefix: Path, bucket: np.ndarray, n: int, records: np.ndarray) -> None:
    """Append each record to its bucket's file ``{prefix}.{b}.bin``, keeping their order."""
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(n + 1))
    records = records[order]
    for b in np.flatnonzero(np.diff(bounds)):
        with open(f"{prefix}.{b}.bin", "ab") as f:
            records[bounds[b] : bounds[b + 1]].tofile(f)


def _read(prefix: Path, b: int, dtype: np.dtype) -> np.ndarray:
    """A bucket's records (none when no record fell in it)."""
    path = Path(f"{prefix}.{b}.bin")
    return np.fromfile(path, dtype) if path.exists() else np.empty(0, dtype)


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


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
        self._users = np.empty(0, np.int64)  # users with impressions, sorted (_partition)
        self._pids: dict[str, int] = {}  # pid values in order of appearance
        self._cleanup: weakref.finalize | None = None

    # -- preparation: partition the two big tables by user ------------------------------
    def _partition(self) -> Path:
        if self._dir is not None:
            return self._dir
        opts = self.options
        size = sum((opts.path / f).stat().st_size for f in ("raw_sample.csv", "behavior_log.csv"))
        n = opts.n_buckets or max(1, math.ceil(size / (opts.bucket_mb << 20)))
        work = spill_directory("fined-taobao", opts.work_dir)  # a killed one's: swept
        self._cleanup = weakref.finalize(self, shutil.rmtree, work, ignore_errors=True)
        try:
            users = self._split_samples(work, n)
            self._split_events(work, n, users)
        except BaseException:
            self.close()
            raise
        self._dir, self._n, self._users = work, n, users
        return work

    def _batches_of(self, file: str) -> Iterator[pa.RecordBatch]:
        return _read_csv(self.options.path / file, self._headers[file], self.options.block_mb)

    def _split_samples(self, work: Path, n: int) -> np.ndarray:
        """raw_sample into ``n`` record files by user, in file order; returns the users seen
        (sorted: an event's user is stored as its index here)."""
        users: list[np.ndarray] = []
        for batch in self._batches_of("raw_sample.csv"):
            user = batch.column("user").to_numpy()
            users.append(np.unique(user))
            rec = np.empty(batch.num_rows, IMPRESSION)
            rec["user"], rec["time"] = user, batch.column("time_stamp").to_numpy()
            rec["adgroup"] = batch.column("adgroup_id").to_numpy()
            rec["clk"] = binary_label(batch.column("clk"), "clk").to_numpy()
            rec["pid"] = self._pid_codes(batch.column("pid"))
            _append(work / "samples", _bucket_of(user, n), n, rec)
        if not users:
            raise FinedError(f"{self.options.path / 'raw_sample.csv'}: no rows")
        return np.unique(np.concatenate(users))

    def _pid_codes(self, pid: pa.Array) -> np.ndarray:
        """Each pid as its index in ``self._pids`` (grown as new values appear); null: -1."""
        encoded = pc.dictionary_encode(pid)
        codes = [self._pids.setdefault(v, len(self._pids)) for v in encoded.dictionary.to_pylist()]
        local = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int32)
        return np.where(local < 0, -1, np.asarray(codes, np.int32)[local])

    def _split_events(self, work: Path, n: int, users: np.ndarray) -> None:
        """behavior_log into ``n`` record files by user, in file order; only users with an
        impression; each event's user as its index in ``users``, its btag as a small code."""
        tags = pa.array(BTAGS)
        for batch in self._batches_of("behavior_log.csv"):
            code = pc.index_in(batch.column("btag"), value_set=tags)
            if code.null_count:
                bad = batch.column("btag").filter(pc.is_null(code))[0]
                raise FinedError(
                    f"behavior_log.csv: column 'btag': unknown value {bad} "
                    f"(expected one of {', '.join(BTAGS)})"
                )
            user = batch.column("user").to_numpy()
            rank = np.searchsorted(users, user)
            keep = users[np.minimum(rank, len(users) - 1)] == user
            rec = np.empty(int(keep.sum()), EVENT)
            rec["rank"], rec["time"] = rank[keep], batch.column("time_stamp").to_numpy()[keep]
            rec["btag"] = code.to_numpy(zero_copy_only=False)[keep]
            nulls = np.zeros(len(rec), np.uint8)
            for bit, name in enumerate(("cate", "brand")):  # a null as a bit: 1 cate, 2 brand
                col = batch.column(name)
                rec[name] = pc.fill_null(col, 0).to_numpy()[keep]
                nulls |= col.is_null().to_numpy(zero_copy_only=False)[keep].astype(np.uint8) << bit
            rec["nulls"] = nulls
            _append(work / "events", _bucket_of(user[keep], n), n, rec)

    # -- the rows ------------------------------------------------------------------------
    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """Impressions bucket by bucket, in chunks of at most ``chunk_rows`` rows."""
        work = self._partition()
        ads, profiles = self._small("ad_feature.csv"), self._small("user_profile.csv")
        # Histories are the widest columns: a chunk holds at most _HISTORY_ENTRIES of them.
        rows = min(chunk_rows, max(1, _HISTORY_ENTRIES // self.options.max_len))
        for b in range(self._n):
            imp = _read(work / "samples", b, IMPRESSION)
            if len(imp):
                ev = _read(work / "events", b, EVENT)
                yield from self._bucket(imp, ev, ads, profiles, rows)

    def _small(self, file: str) -> pa.Table:
        """A small table (ads, profiles), read whole; the first row of a repeated key wins."""
        schema = pa.schema(list(TABLES[file].items()))
        table = pa.Table.from_batches(list(self._batches_of(file)), schema=schema)
        if "price" in table.column_names:  # an infinite price has no mean or quantiles
            try:
                finite_numbers(_plain(table["price"]), "column 'price'", 0)
            except FinedError as err:
                raise FinedError(f"{self.options.path / file}: {err}") from None
        return table

    def _bucket(
        self, imp: np.ndarray, ev: np.ndarray, ads: pa.Table, profiles: pa.Table, chunk_rows: int
    ) -> Iterator[pa.RecordBatch]:
        """One bucket's impressions, in file order, joined with ads, profiles and histories."""
        # Each impression's events strictly before it, the last max_len, oldest first; ties
        # keep file order (the record files keep it and the sort is stable).
        history = SortedEvents(ev["rank"], ev["time"])
        ev_cols = {
            "cate": pa.array(ev["cate"], mask=(ev["nulls"] & 1) > 0),
            "brand": pa.array(ev["brand"], mask=(ev["nulls"] & 2) > 0),
            "btag": pa.array(ev["btag"]),
        }
        # Small-table joins by key lookup, once a bucket (index_in keeps the order; no
        # match: null); the chunks slice them.
        user, adgroup = pa.array(imp["user"]), pa.array(imp["adgroup"])
        ad_rows = ads.take(pc.index_in(adgroup, value_set=ads["adgroup_id"]))
        prof_rows = profiles.take(pc.index_in(user, value_set=profiles["userid"]))
        local = imp["time"] + CHINA
        flat: dict[str, Any] = {
            "label": pa.array(imp["clk"]),
            "time": pa.array(imp["time"]),
            "userid": user,
            **{c: prof_rows[c] for c in PROFILE},
            "adgroup_id": adgroup,
            **{c: ad_rows[c] for c in AD},
            "price": ad_rows["price"],
            "pid": pa.array(list(self._pids), pa.string()).take(
                pa.array(imp["pid"], mask=imp["pid"] < 0)
            ),
            "hour": pa.array(local // 3600 % 24),
            "weekday": pa.array((local // 86400 + 3) % 7),  # 1970-01-01 was a Thursday
        }
        flat = {c: _plain(v) for c, v in flat.items()}
        ranks = np.searchsorted(self._users, imp["user"])
        tags = pa.array(BTAGS)
        for lo in range(0, len(imp), chunk_rows):
            hi = min(lo + chunk_rows, len(imp))
            offsets, events = history.before(ranks[lo:hi], imp["time"][lo:hi], self.options.max_len)
            lists, idx = pa.array(offsets.astype(np.int32)), pa.array(events)
            values = {c: v.slice(lo, hi - lo) for c, v in flat.items()}
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
