"""Append-only vocabularies: index 0 = padding, 1 = out-of-vocabulary, ids from 2 on.

A vocabulary capped at ``max_vocab`` ids (for features too large to embed id by id) keeps
the first ``max_vocab`` ids to enter, and hashes every other non-null id into one of
``buckets`` shared rows placed right after OOV (indices 2 .. 2 + buckets - 1, ids after them).
Collisions are by design: all ids of a bucket share one embedding, which learns their
average effect; a hashed id never gets a row of its own later (that would break the
append-only property), and the bucket rows exist from the first period on, so a model of
any period can use them. The hash of an integer id is a fixed multiplicative hash, of a
string id polars' (stable for a given polars version: prepare a dataset with one version).

Continual training depends on one property: an id keeps its index forever. New ids are only
ever appended, and ids are appended period by period in time order, so the vocabulary as it
stood after period t is a prefix of the final one (``size_by_period[t]``). A model trained up to
period t can therefore map every id that arrived later to OOV, exactly as it would have in
production.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from fined.data.feature_map import OOV

# Integer ids below this bound are looked up through a dense table (one gather), above it
# through Arrow's hash lookup.
_DENSE_LOOKUP_MAX = 1 << 24


class Vocabulary:
    """Raw id -> index map for one feature (or a group of features sharing it)."""

    def __init__(
        self, ids: Sequence[Any] = (), size_by_period: Sequence[int] = (), buckets: int = 0
    ) -> None:
        self.ids: list[Any] = list(ids)
        self.size_by_period: list[int] = list(size_by_period)
        self.buckets = buckets
        self.first = 2 + buckets  # index of the first id with a row of its own
        self._index = {v: i + self.first for i, v in enumerate(self.ids)}
        self._lookup_cache: tuple[int, Any] | None = None

    def __len__(self) -> int:
        """Number of rows an embedding table needs (padding, OOV, buckets, ids)."""
        return len(self.ids) + self.first

    def index(self, value: Any) -> int:
        return int(self.lookup(pa.array([value]))[0])

    def extend(self, new_ids: Sequence[Any]) -> None:
        """Append the ids not yet known (in the given order) and close a period."""
        for v in new_ids:
            if v not in self._index:
                self._index[v] = len(self.ids) + self.first
                self.ids.append(v)
        self.size_by_period.append(len(self))

    def lookup(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Map raw ids to indices (int32); null ids -> OOV, unknown ids -> their hash bucket
        (OOV without buckets)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        out = self._lookup_known(values)
        if self.buckets:
            unknown = (out == OOV) & ~values.is_null().to_numpy(zero_copy_only=False)
            if unknown.any():
                taken = values.filter(pa.array(unknown))
                out[unknown] = 2 + hash_buckets(taken, self.buckets)
        return out

    def _lookup_known(self, values: pa.Array) -> np.ndarray:
        if not self.ids:
            return np.full(len(values), OOV, dtype=np.int32)
        kind, table = self._lookup_table()
        if kind == "dense":
            if not pa.types.is_integer(values.type):
                values = _cast_ids(values, pa.int64())
            raw = pc.fill_null(values, -1).to_numpy(zero_copy_only=False).astype(np.int64)
            inside = (raw >= 0) & (raw < len(table))
            out = np.full(len(raw), OOV, dtype=np.int32)
            out[inside] = table[raw[inside]]
            return out
        values = _cast_ids(values, table.type)
        pos = pc.index_in(values, value_set=table)
        found = pc.fill_null(pc.add(pos, self.first), OOV)
        return found.to_numpy(zero_copy_only=False).astype(np.int32)

    def _lookup_table(self) -> tuple[str, Any]:
        if self._lookup_cache and self._lookup_cache[0] == len(self.ids):
            return self._lookup_cache[1]
        arr = pa.array(self.ids)
        if pa.types.is_integer(arr.type) and pc.min(arr).as_py() >= 0:
            top = pc.max(arr).as_py()
            if top < _DENSE_LOOKUP_MAX:
                table = np.full(top + 1, OOV, dtype=np.int32)
                table[np.asarray(self.ids, dtype=np.int64)] = np.arange(
                    self.first, len(self), dtype=np.int32
                )
                result: tuple[str, Any] = ("dense", table)
                self._lookup_cache = (len(self.ids), result)
                return result
        result = ("hash", arr)
        self._lookup_cache = (len(self.ids), result)
        return result

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "size_by_period": self.size_by_period, "buckets": self.buckets}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(data["ids"], data["size_by_period"], data.get("buckets", 0))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: Knuth's multiplicative hash


def hash_buckets(values: pa.Array, buckets: int) -> np.ndarray:
    """A fixed bucket in [0, buckets) for each (non-null) id."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        raw = _cast_ids(values, pa.int64()).to_numpy(zero_copy_only=False).astype(np.uint64)
        with np.errstate(over="ignore"):
            mixed = (raw * _GOLDEN) >> np.uint64(29)
    else:
        mixed = pl.Series(values.cast(pa.string())).hash(seed=0).to_numpy()
    return (mixed % np.uint64(buckets)).astype(np.int32)


def _cast_ids(values: pa.Array, target: pa.DataType) -> pa.Array:
    if values.type == target:
        return values
    if pa.types.is_floating(values.type):  # ids that went through a float column: 3.0 -> 3
        values = pc.cast(values, pa.int64())
    return pc.cast(values, target)


def count_ids(values: pa.Array | np.ndarray, period: np.ndarray) -> pl.DataFrame:
    """Count occurrences of each (id, period) pair: columns ``value``, ``period``, ``count``."""
    frame = pl.DataFrame({"value": pl.Series(values), "period": period})
    return frame.drop_nulls("value").group_by(["value", "period"]).agg(pl.len().alias("count"))


def merge_counts(parts: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [p for p in parts if p.height]
    if not frames:
        return pl.DataFrame(schema={"value": pl.Int64, "period": pl.Int64, "count": pl.UInt32})
    dtype = _common_id_type([f.schema["value"] for f in frames])
    frames = [f.with_columns(pl.col("value").cast(dtype)) for f in frames]
    return pl.concat(frames).group_by(["value", "period"]).agg(pl.col("count").sum())


class PeriodCounts:
    """The (id, period) counts of one vocabulary, gathered chunk by chunk in bounded memory.

    Parts are kept per period and merged period by period, the one with the most unmerged
    rows first, once the unmerged rows exceed the merged ones (or ``floor``): memory stays a
    small multiple of the distinct (id, period) pairs however long the log, and a merge's
    working memory is one period's ids, not the whole table's (a merge of 9 M rows across
    periods took 0.55 GB of polars' memory at once).
    """

    def __init__(self, floor: int = 1 << 22) -> None:
        self.floor = floor
        self._parts: dict[int, list[pl.DataFrame]] = {}
        self._merged = 0  # rows of the merged parts (the first of each period's list)
        self._pending = 0  # rows of the others

    def add(self, part: pl.DataFrame) -> None:
        """A chunk's counts (``count_ids``)."""
        for (period,), frame in part.partition_by("period", as_dict=True).items():
            parts = self._parts.setdefault(int(period), [])
            if parts:
                self._pending += frame.height
            else:
                self._merged += frame.height
            parts.append(frame)
        while self._pending > max(self.floor, self._merged):
            fullest = max(self._parts.values(), key=lambda ps: sum(p.height for p in ps[1:]))
            self._pending -= sum(p.height for p in fullest[1:])
            self._merged -= fullest[0].height
            fullest[:] = [merge_counts(fullest)]
            self._merged += fullest[0].height

    def frame(self) -> pl.DataFrame:
        """All counts, one row per (id, period): ``value``, ``period``, ``count``. (The
        periods' merged counts are disjoint: concatenated, not grouped again.)"""
        frames = [ps[0] if len(ps) == 1 else merge_counts(ps) for ps in self._parts.values()]
        if not frames:
            return merge_counts([])
        dtype = _common_id_type([f.schema["value"] for f in frames])
        return pl.concat([f.with_columns(pl.col("value").cast(dtype)) for f in frames])


def _common_id_type(types: list[pl.DataType]) -> pl.DataType:
    if all(t.is_integer() for t in types):
        return pl.Int64()
    return pl.String()


def grow_vocabulary(
    counts: pl.DataFrame,
    n_periods: int,
    min_count: int,
    max_vocab: int | None = None,
    buckets: int = 0,
) -> Vocabulary:
    """Build the append-only vocabulary from per-period id counts.

    An id enters at the first period where its cumulative count reaches ``min_count``; within
    a period, ids are appended by decreasing count, then by value (deterministic). With
    ``max_vocab``, only the first ``max_vocab`` ids in that order get a row (a prefix, so the
    vocabulary stays append-only); the others hash into ``buckets`` rows.
    ``counts.period`` holds period ordinals 0..n_periods-1.
    """
    vocab = Vocabulary(buckets=buckets)
    entered = (
        counts.sort(["value", "period"])
        .with_columns(pl.col("count").cum_sum().over("value").alias("cum"))
        .filter(pl.col("cum") >= min_count)
        .group_by("value")
        .agg(pl.col("period").first(), pl.col("count").first())
        .sort(["period", "count", "value"], descending=[False, True, False])
    )
    if max_vocab is not None:
        entered = entered.head(max_vocab)
    by_period = entered.partition_by("period", as_dict=True, maintain_order=True)
    for p in range(n_periods):
        part = by_period.get((p,))
        vocab.extend(part["value"].to_list() if part is not None else [])
    return vocab
