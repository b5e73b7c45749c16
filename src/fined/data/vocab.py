"""Append-only vocabularies: index 0 = padding, 1 = out-of-vocabulary, ids from 2 on.

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

PAD = 0
OOV = 1
# Integer ids below this bound are looked up through a dense table (one gather), above it
# through Arrow's hash lookup.
_DENSE_LOOKUP_MAX = 1 << 24


class Vocabulary:
    """Raw id -> index map for one feature (or a group of features sharing it)."""

    def __init__(self, ids: Sequence[Any] = (), size_by_period: Sequence[int] = ()) -> None:
        self.ids: list[Any] = list(ids)
        self.size_by_period: list[int] = list(size_by_period)
        self._index = {v: i + 2 for i, v in enumerate(self.ids)}
        self._lookup_cache: tuple[int, Any] | None = None

    def __len__(self) -> int:
        """Number of rows an embedding table needs (ids + padding + OOV)."""
        return len(self.ids) + 2

    def index(self, value: Any) -> int:
        return self._index.get(value, OOV)

    def extend(self, new_ids: Sequence[Any]) -> None:
        """Append the ids not yet known (in the given order) and close a period."""
        for v in new_ids:
            if v not in self._index:
                self._index[v] = len(self.ids) + 2
                self.ids.append(v)
        self.size_by_period.append(len(self))

    def lookup(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Map raw ids to indices (int32); unknown and null ids -> OOV."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
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
        return (pc.fill_null(pc.add(pos, 2), OOV)).to_numpy(zero_copy_only=False).astype(np.int32)

    def _lookup_table(self) -> tuple[str, Any]:
        if self._lookup_cache and self._lookup_cache[0] == len(self.ids):
            return self._lookup_cache[1]
        arr = pa.array(self.ids)
        if pa.types.is_integer(arr.type) and pc.min(arr).as_py() >= 0:
            top = pc.max(arr).as_py()
            if top < _DENSE_LOOKUP_MAX:
                table = np.full(top + 1, OOV, dtype=np.int32)
                table[np.asarray(self.ids, dtype=np.int64)] = np.arange(
                    2, len(self), dtype=np.int32
                )
                result: tuple[str, Any] = ("dense", table)
                self._lookup_cache = (len(self.ids), result)
                return result
        result = ("hash", arr)
        self._lookup_cache = (len(self.ids), result)
        return result

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "size_by_period": self.size_by_period}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(data["ids"], data["size_by_period"])


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


def _common_id_type(types: list[pl.DataType]) -> pl.DataType:
    if all(t.is_integer() for t in types):
        return pl.Int64
    return pl.String


def grow_vocabulary(counts: pl.DataFrame, n_periods: int, min_count: int) -> Vocabulary:
    """Build the append-only vocabulary from per-period id counts.

    An id enters at the first period where its cumulative count reaches ``min_count``; within
    a period, ids are appended by decreasing count, then by value (deterministic).
    ``counts.period`` holds period ordinals 0..n_periods-1.
    """
    vocab = Vocabulary()
    entered = (
        counts.sort(["value", "period"])
        .with_columns(pl.col("count").cum_sum().over("value").alias("cum"))
        .filter(pl.col("cum") >= min_count)
        .group_by("value")
        .agg(pl.col("period").first(), pl.col("count").first())
        .sort(["period", "count", "value"], descending=[False, True, False])
    )
    by_period = entered.partition_by("period", as_dict=True, maintain_order=True)
    for p in range(n_periods):
        part = by_period.get((p,))
        vocab.extend(part["value"].to_list() if part is not None else [])
    return vocab
