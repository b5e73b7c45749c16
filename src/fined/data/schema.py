"""Typed, validated descriptions of features, periods and a prepare job (pydantic).

Validation messages name the offending key (``features.2.kind: ...``) so that a bad YAML file
ends in one clear line, not a traceback.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from fined.config import StrictModel, load_yaml, parse_model
from fined.errors import FinedError

FeatureKind = Literal["categorical", "numeric", "sequence"]
# A path option given as text (YAML) or as a Path object (library users); kept as text.
PathText = Annotated[
    str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)
]
Source = Literal["user", "item", "context"]


class FeatureSpec(StrictModel):
    """One input field.

    - ``categorical``: ids (int or str), mapped through an append-only vocabulary.
    - ``numeric``: a float; ``transform: bucketize`` turns it into quantile-bucket ids (fitted on
      the fit periods, then it behaves like a categorical field), ``scale`` standardizes it.
    - ``sequence``: a list of ids (e.g. a behaviour history), truncated to the last ``max_len``
      elements and right-padded with 0.
    """

    name: str
    kind: FeatureKind
    source: Source = "context"
    column: str | None = None  # raw column name where it differs from `name` (table sources)
    min_count: int = Field(1, ge=1)
    # At most this many ids get a row of their own (the first to enter); every other id is
    # hashed into `hash_buckets` shared rows (see fined.data.vocab). None: no cap.
    max_vocab: int | None = Field(None, ge=1)
    hash_buckets: int = Field(1024, ge=1)
    vocab: str | None = None  # share the vocabulary (and embedding) of another feature
    max_len: int = Field(20, ge=1)
    delimiter: str = "^"  # list separator when a sequence arrives as text
    transform: Literal["bucketize", "scale"] = "bucketize"
    n_buckets: int = Field(10, ge=2)

    @property
    def raw_column(self) -> str:
        return self.column or self.name

    @property
    def is_float(self) -> bool:
        """True when the encoded value is a float, not an id."""
        return self.kind == "numeric" and self.transform == "scale"


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class PeriodSpec(StrictModel):
    """How rows are cut into consecutive periods, and how much of each is held out.

    ``by``: a calendar unit of the row time stamp (``hour``/``day``/``week``/``month``, weeks
    start on Monday), explicit ``boundaries`` (period i = [b_i, b_i+1)), ``rows`` (blocks of
    rows, for logs in time order without time stamps), or ``key`` (a period key the source
    supplies, e.g. the day in a file name).
    """

    by: Literal["hour", "day", "week", "month", "boundaries", "rows", "key"] = "day"
    boundaries: list[datetime] | None = None
    n_periods: int | None = Field(None, ge=1)
    rows_per_period: int | None = Field(None, ge=2)
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    min_rows: int = Field(2, ge=2)
    utc_offset_hours: float = 0.0  # calendar units are cut in this local time
    start: datetime | None = None  # rows before `start` or at/after `end` are left out
    end: datetime | None = None  # (counted, and reported by prepare)
    allow_gaps: bool = False  # calendar units with no rows between the first and last
    # Plausible time stamps: a row outside [earliest, latest] (latest: None = a year from now)
    # is an error unless `invalid_time: skip`. One outlier (milliseconds read as seconds, a 0
    # for "unknown") would otherwise make periods nobody meant.
    earliest: datetime = datetime(1990, 1, 1)
    latest: datetime | None = None
    # Rows whose time stamp is missing or implausible: `error` (the default) names the first
    # and stops; `skip` leaves them out, counted in feature_map.json and in prepare's report.
    invalid_time: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _check(self) -> PeriodSpec:
        if self.by == "boundaries" and (not self.boundaries or len(self.boundaries) < 2):
            raise ValueError("by: boundaries needs `boundaries` with at least two time stamps")
        if self.boundaries and sorted(self.boundaries) != self.boundaries:
            raise ValueError("boundaries must be in increasing order")
        if self.by == "rows" and (self.n_periods is None) == (self.rows_per_period is None):
            raise ValueError("by: rows needs exactly one of `n_periods` or `rows_per_period`")
        if self.latest is not None and _utc(self.latest) <= _utc(self.earliest):
            raise ValueError("latest must come after earliest")
        return self


class PrepareConfig(StrictModel):
    """A ``fined data prepare`` job: which dataset adapter, its options, periods, features."""

    dataset: str
    options: dict[str, Any] = Field(default_factory=dict)
    periods: PeriodSpec | None = None  # None: the adapter's default
    features: list[FeatureSpec] | None = None  # None: the adapter's default
    fit_periods: int = Field(1, ge=1)  # numeric quantiles/scales are fitted on these periods
    user_key: str | None = None  # the feature that identifies a user (for gAUC)
    chunk_rows: int = Field(262_144, ge=1)
    # Rows per Parquet row group: the unit a rank of a multi-process job reads its share by.
    row_group_rows: int = Field(131_072, ge=1)


# Column names of the standardized batches and of the period files that are not features: a
# feature of that name would replace the label, the time stamps or the holdout flags.
RESERVED_NAMES = ("label", "time", "holdout", "period_key")


def check_features(features: list[FeatureSpec]) -> None:
    """Cross-feature rules: no reserved names, unique names, shared vocabularies point at
    id features."""
    names = [f.name for f in features]
    for name in names:
        if name in RESERVED_NAMES:
            raise FinedError(
                f"features.{name}: {name!r} is a reserved name ({', '.join(RESERVED_NAMES)} "
                f"are columns fined adds); rename the feature (`column: {name}` still reads "
                "that raw column)"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FinedError(f"features: duplicate name(s) {', '.join(dupes)}")
    by_name = {f.name: f for f in features}
    for f in features:
        if f.vocab is None:
            continue
        owner = by_name.get(f.vocab)
        if owner is None:
            raise FinedError(f"features.{f.name}.vocab: no feature named {f.vocab!r}")
        if owner.kind == "numeric" or owner.vocab is not None:
            raise FinedError(
                f"features.{f.name}.vocab: {f.vocab!r} must be a categorical or sequence "
                "feature that owns its vocabulary"
            )
        if f.kind == "numeric":
            raise FinedError(f"features.{f.name}.vocab: numeric features cannot share a vocabulary")


def load_prepare_config(path: str | Path) -> PrepareConfig:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise FinedError(f"{path}: expected a mapping at the top level")
    return parse_model(PrepareConfig, data, str(path))
