"""The contract between a dataset adapter and the encoder.

An adapter turns one public format into a stream of Arrow record batches with standardized
columns; everything after that (periods, vocabularies, encoding, Parquet) is shared.

Columns of every batch:

- ``label``: int8, 0 or 1 (adapters validate: a non-binary label is a FinedError).
- ``time``: int64 unix seconds (UTC). Sources without time stamps (row-ordered logs) emit
  the running row number instead and use ``PeriodSpec(by="rows")``.
- ``period_key``: int64, only for ``PeriodSpec(by="key")`` (e.g. the day in a file name).
- one column per feature, named by ``FeatureSpec.name``: int64 or string ids for
  ``categorical``, float64 (nulls allowed) for ``numeric``, ``list<int64|string>`` for
  ``sequence`` (in time order, oldest first).

``batches()`` is called more than once (the encoder makes two passes) and must yield the same
rows in the same order each time, streaming with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import pyarrow as pa

from fined.data.schema import FeatureSpec, PeriodSpec


class RawSource(Protocol):
    """What an adapter provides. Built by ``fined.data.datasets.open_source``."""

    name: str
    features: list[FeatureSpec]
    periods: PeriodSpec
    user_key: str | None  # the feature that identifies a user, for gAUC

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        """Stream the rows as standardized record batches of about ``chunk_rows`` rows."""
        ...

    def period_names(self) -> dict[int, str]:
        """Display names for ``period_key`` values (only used with ``by: key``)."""
        ...

    def extra_files(self) -> dict[str, Any]:
        """JSON documents written beside the data (e.g. the synthetic ground truth)."""
        ...

    def notes(self) -> dict[str, int]:
        """Counts the prepare summary reports (e.g. ids the source could not resolve)."""
        ...

    def close(self) -> None:
        """Release temporary files; called once the encoder is done with the source."""
        ...


class BaseSource:
    """Defaults for the optional parts of the contract; adapters subclass it."""

    name: str = "source"
    user_key: str | None = None

    def __init__(self, features: list[FeatureSpec], periods: PeriodSpec) -> None:
        self.features = features
        self.periods = periods

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:  # pragma: no cover
        raise NotImplementedError

    def period_names(self) -> dict[int, str]:
        return {}

    def extra_files(self) -> dict[str, Any]:
        return {}

    def notes(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        return None
