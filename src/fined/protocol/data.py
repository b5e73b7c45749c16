"""The rows each step of the protocol reads, cached: every cell reads the same few slices.

Rows are always loaded as a model trained through period ``known`` sees them: ids that
entered the vocabulary later are mapped to OOV.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from fined.data.batch import Batch
from fined.data.loader import Part, PeriodStore


class ProtocolData:
    def __init__(self, store: PeriodStore) -> None:
        self.store = store
        self.feature_map = store.feature_map
        self._load = lru_cache(maxsize=64)(self._read)

    def _read(self, periods: tuple[int, ...], part: Part, known: int) -> Batch:
        return self.store.load(list(periods), part, known_through=known)

    def train(self, periods: list[int], known: int) -> Batch:
        return self._load(tuple(periods), "train", known)

    def holdout(self, periods: list[int], known: int) -> Batch:
        return self._load(tuple(periods), "holdout", known)

    def test(self, period: int, known: int) -> Batch:
        """A whole period after the training ones (never used for any choice)."""
        return self._load((period,), "all", known)

    def reservoir(self, periods: list[int], known: int, rows: int, seed: int) -> Batch:
        """A uniform sample of ``rows`` training rows of ``periods``, as a reservoir kept over
        the stream would hold it: bottom-k sampling (every row gets a fixed random key when it
        arrives; the reservoir keeps the ``rows`` smallest keys seen so far), so the content
        depends only on the rows seen, and is recomputed here instead of stored."""
        parts, keys = [], []
        for p in periods:
            batch = self.train([p], known)
            g = torch.Generator().manual_seed(seed * 1_000_003 + p)
            parts.append(batch)
            keys.append(torch.rand(len(batch), generator=g))
        data, key = Batch.concat(parts), torch.cat(keys)
        if rows >= len(data):
            return data
        keep = torch.topk(key, rows, largest=False).indices.sort().values
        return data.take(keep)
