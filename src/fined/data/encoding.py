"""Turning raw Arrow columns into model inputs: ids (int32), floats, padded id sequences."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fined.data.numeric import NumericTransform
from fined.data.schema import FeatureSpec
from fined.data.vocab import Vocabulary
from fined.errors import FinedError


def last_items(
    values: pa.Array | pa.ChunkedArray, max_len: int
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The last ``max_len`` elements of each list, flattened.

    Returns ``(items, row, col)``: the kept elements, the row each came from and its position
    in the right-padded ``[rows, max_len]`` output (oldest kept element at column 0).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        raise FinedError(f"sequence column has type {values.type}, expected a list")
    lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
    lengths = lengths.astype(np.int64)
    flat = pc.list_flatten(values)
    kept = np.minimum(lengths, max_len)
    ends = np.cumsum(lengths)
    row = np.repeat(np.arange(len(lengths)), kept)
    first_kept = np.repeat(ends - kept, kept)
    col = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    return flat.take(pa.array(first_kept + col)), row, col


class RowEncoder:
    """Encodes record batches with fitted vocabularies and numeric transforms."""

    def __init__(
        self,
        features: list[FeatureSpec],
        vocabs: dict[str, Vocabulary],
        transforms: dict[str, NumericTransform],
    ) -> None:
        self.features = features
        self.vocabs = vocabs
        self.transforms = transforms

    def vocab_of(self, spec: FeatureSpec) -> Vocabulary:
        return self.vocabs[spec.vocab or spec.name]

    def encode(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Arrow arrays per feature: int32 ids, float32 values, fixed-size int32 lists."""
        out: dict[str, pa.Array] = {}
        for spec in self.features:
            col = column(batch, spec.name)
            if spec.kind == "categorical":
                out[spec.name] = pa.array(self.vocab_of(spec).lookup(col))
            elif spec.kind == "numeric":
                values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
                out[spec.name] = pa.array(self.transforms[spec.name].apply(values))
            else:
                items, row, pos = last_items(col, spec.max_len)
                grid = np.zeros((len(batch), spec.max_len), dtype=np.int32)
                grid[row, pos] = self.vocab_of(spec).lookup(items)
                out[spec.name] = pa.FixedSizeListArray.from_arrays(
                    pa.array(grid.ravel()), spec.max_len
                )
        return out


def column(batch: pa.RecordBatch, name: str) -> pa.Array:
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        raise FinedError(f"the source has no column for feature {name!r}")
    return batch.column(idx)
