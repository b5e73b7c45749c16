"""A drift generator with planted feature patterns that switch off and recur.

Each row has ``n_fields`` categorical fields with Zipf-distributed ids (and optionally
``n_numeric`` numeric fields). A *pattern* is a set of 2-4 fields whose joint ids carry a
click effect ``w * s_1(id_1) * ... * s_k(id_k)`` with random signs ``s_j(id) = +-1``: each field
alone has no effect on average, only the combination does. The *regime* of a period says
which patterns are active; by default half of the patterns are present in the first third of
the periods, absent in the middle third and back in the last third (where forgetting hurts),
the others are always on. Popularity drifts too: each period a share of the id ranks is taken
over by ids never seen before.

Deterministic by seed, generated in fixed blocks so that every pass yields the same rows;
the ground truth (pattern field sets, weights, regimes) is written as ``ground_truth.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, ValidationError, model_validator

from fined.config import StrictModel, format_validation_error, parse_model
from fined.data.datasets import register
from fined.data.datasets.source import BaseSource
from fined.data.schema import FeatureSpec, PeriodSpec, PrepareConfig
from fined.errors import FinedError
from fined.io import read_json

GROUND_TRUTH = "ground_truth.json"  # beside the prepared periods: read_ground_truth
_BLOCK = 131_072  # generation block: fixed, so output does not depend on the reader's chunks
_SOURCES = ("user", "item", "context")


class SyntheticOptions(StrictModel):
    n_rows: int = Field(400_000, ge=100)
    n_periods: int = Field(6, ge=2)
    n_fields: int = Field(12, ge=2)
    cardinality: int | list[int] = Field(
        default_factory=lambda: [2000, 1000, 60, 40, 30, 20, 20, 12, 12, 10, 8, 8]
    )
    zipf: float = Field(1.1, ge=0.0)
    n_numeric: int = Field(0, ge=0)
    n_patterns: int = Field(4, ge=0)
    pattern_orders: list[int] = Field(default_factory=lambda: [2, 3])
    pattern_fields: list[list[int]] | None = None  # explicit field sets (indices)
    pattern_weight: float = Field(1.2, ge=0.0)
    main_effect: float = Field(0.3, ge=0.0)
    bias: float = -0.6
    regimes: list[list[int]] | None = None  # active pattern indices per period
    # Share of id ranks taken by new ids per period: one share for every field, or one per
    # field (a log whose users are mostly new each day: ``[0.9, 0.5, 0.05, ...]``).
    drift: float | list[float] = 0.05
    start: date = date(2024, 1, 1)
    # A categorical ``weekday`` field (0 = Monday) of each row's day, with no effect of its
    # own: with daily periods and regimes that switch patterns on at weekends, what a log
    # of weekly cycles shows a model (benchmarks/seasonal.py).
    weekday: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SyntheticOptions:
        if isinstance(self.cardinality, list) and len(self.cardinality) != self.n_fields:
            raise ValueError(
                f"cardinality has {len(self.cardinality)} entries for {self.n_fields} fields"
            )
        if any(o < 2 or o > self.n_fields for o in self.pattern_orders):
            raise ValueError("pattern_orders must lie between 2 and n_fields")
        shares = self.drift if isinstance(self.drift, list) else [self.drift]
        if isinstance(self.drift, list) and len(self.drift) != self.n_fields:
            raise ValueError(f"drift has {len(self.drift)} entries for {self.n_fields} fields")
        if any(not 0.0 <= x <= 1.0 for x in shares):
            raise ValueError("drift shares must lie between 0 and 1")
        if self.regimes is not None and len(self.regimes) != self.n_periods:
            raise ValueError(
                f"regimes has {len(self.regimes)} entries for {self.n_periods} periods"
            )
        return self


class SyntheticSource(BaseSource):
    name = "synthetic"

    def __init__(self, config: PrepareConfig) -> None:
        o = parse_model(SyntheticOptions, config.options, "options")
        self.o = o
        card = o.cardinality if isinstance(o.cardinality, list) else [o.cardinality] * o.n_fields
        self.card = np.array(card, dtype=np.int64)
        self.field_names = [f"f{j:02d}" for j in range(o.n_fields)]
        self.numeric_names = [f"x{j:02d}" for j in range(o.n_numeric)]
        features = [
            FeatureSpec(
                name=n, kind="categorical", source=_SOURCES[min(j, 2)] if j < 2 else _SOURCES[j % 3]
            )
            for j, n in enumerate(self.field_names)
        ] + [FeatureSpec(name=n, kind="numeric", transform="bucketize") for n in self.numeric_names]
        if o.weekday:
            features.append(FeatureSpec(name="weekday", kind="categorical", source="context"))
        super().__init__(config.features or features, config.periods or PeriodSpec(by="day"))
        self.user_key = config.user_key or "f00"
        rng = np.random.default_rng(o.seed)
        self.patterns = self._draw_patterns(rng)
        self.weights = [o.pattern_weight * (1 if rng.random() < 0.5 else -1) for _ in self.patterns]
        self.regimes = o.regimes if o.regimes is not None else self._default_regimes()
        for r in self.regimes:
            if any(i < 0 or i >= len(self.patterns) for i in r):
                raise FinedError(f"options.regimes: pattern index out of range in {r}")
        self.main = [rng.normal(0, o.main_effect, size=4096) for _ in range(o.n_fields)]
        self.sign_salt = rng.integers(1, 2**31, size=o.n_fields)
        self.rank_to_id = self._drifting_ids(rng)
        self.numeric_w = rng.normal(0, 0.5, size=o.n_numeric)

    # -- ground truth ------------------------------------------------------------------------
    def _draw_patterns(self, rng: np.random.Generator) -> list[list[int]]:
        o = self.o
        if o.pattern_fields is not None:
            for fs in o.pattern_fields:
                if len(set(fs)) < 2 or any(j < 0 or j >= o.n_fields for j in fs):
                    raise FinedError(f"options.pattern_fields: bad field set {fs}")
            return [sorted(fs) for fs in o.pattern_fields]
        # Patterns live on the lower-cardinality fields (their combinations are learnable)
        # and do not share fields while there are enough of them, so that each planted set
        # is identifiable.
        pool = list(np.argsort(self.card, kind="stable")[: max(o.n_fields - 2, 2)])
        rng.shuffle(pool)
        patterns = []
        for i in range(o.n_patterns):
            order = o.pattern_orders[i % len(o.pattern_orders)]
            if len(pool) < order:
                pool = list(rng.permutation(o.n_fields))
            patterns.append(sorted(int(pool.pop()) for _ in range(order)))
        return patterns

    def _default_regimes(self) -> list[list[int]]:
        n, k = self.o.n_periods, len(self.patterns)
        recurring = set(range(0, k, 2))  # patterns 0, 2, ...: on, off in the middle, back
        third = max(1, n // 3)
        return [
            [i for i in range(k) if i not in recurring or not (third <= t < n - third)]
            for t in range(n)
        ]

    def _drifting_ids(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """Per period and field, the id shown at each popularity rank."""
        out = []
        current = [np.arange(c) for c in self.card]
        next_new = [int(c) for c in self.card]
        o = self.o
        shares = o.drift if isinstance(o.drift, list) else [o.drift] * o.n_fields
        for t in range(self.o.n_periods):
            if t > 0 and any(shares):
                for j, ids in enumerate(current):
                    ids = ids.copy()
                    moved = rng.random(len(ids)) < shares[j]
                    n_new = int(moved.sum())
                    ids[moved] = np.arange(next_new[j], next_new[j] + n_new)
                    next_new[j] += n_new
                    current[j] = ids
            out.append([ids.copy() for ids in current])
        return out

    def extra_files(self) -> dict[str, Any]:
        return {
            GROUND_TRUTH: {
                "fields": self.field_names,
                "cardinality": self.card.tolist(),
                "patterns": [
                    {"fields": [self.field_names[j] for j in p], "field_index": p, "weight": w}
                    for p, w in zip(self.patterns, self.weights, strict=True)
                ],
                "regimes": self.regimes,
                "options": self.o.model_dump(mode="json"),
            }
        }

    # -- rows --------------------------------------------------------------------------------
    def _sign(self, j: int, ids: np.ndarray) -> np.ndarray:
        """A fixed pseudo-random +-1 per (field, id), also for ids born later."""
        h = (
            ids.astype(np.uint64) * np.uint64(2654435761) + np.uint64(self.sign_salt[j])
        ) >> np.uint64(13)
        return np.where(h & np.uint64(1), 1.0, -1.0)

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        o = self.o
        per_period = np.full(o.n_periods, o.n_rows // o.n_periods)
        per_period[: o.n_rows % o.n_periods] += 1
        day0 = int(
            datetime(o.start.year, o.start.month, o.start.day, tzinfo=timezone.utc).timestamp()
        )
        cdfs = [_zipf_cdf(int(c), o.zipf) for c in self.card]
        for t in range(o.n_periods):
            for b, lo in enumerate(range(0, int(per_period[t]), _BLOCK)):
                n = min(_BLOCK, int(per_period[t]) - lo)
                rng = np.random.default_rng([o.seed, t, b])
                yield self._block(rng, t, lo, n, int(per_period[t]), day0, cdfs)

    def _block(self, rng, t, lo, n, period_rows, day0, cdfs) -> pa.RecordBatch:
        o = self.o
        ranks = [np.searchsorted(cdf, rng.random(n)) for cdf in cdfs]
        ids = [self.rank_to_id[t][j][r] for j, r in enumerate(ranks)]
        logit = np.full(n, o.bias)
        for j, idx in enumerate(ids):
            logit += self.main[j][idx % 4096]
        for p in self.regimes[t]:
            effect = np.full(n, self.weights[p])
            for j in self.patterns[p]:
                effect *= self._sign(j, ids[j])
            logit += effect
        cols: dict[str, Any] = {}
        numeric = rng.normal(size=(n, o.n_numeric))
        if o.n_numeric:
            logit += numeric @ self.numeric_w
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        # Times spread evenly over the period's day, increasing with the row number.
        time = (
            day0
            + t * 86400
            + ((lo + np.arange(n) + rng.random(n)) * 86400 / period_rows).astype(np.int64)
        )
        cols["label"] = pa.array(label)
        cols["time"] = pa.array(time)
        cols.update({name: pa.array(ids[j]) for j, name in enumerate(self.field_names)})
        cols.update({name: pa.array(numeric[:, j]) for j, name in enumerate(self.numeric_names)})
        if o.weekday:
            cols["weekday"] = pa.array(np.full(n, (o.start.weekday() + t) % 7, dtype=np.int64))
        return pa.RecordBatch.from_pydict(cols)


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    return cdf


@register("synthetic", SyntheticOptions)
def build(config: PrepareConfig) -> SyntheticSource:
    """Generated drift with planted recurring patterns (ground_truth.json): by day."""
    return SyntheticSource(config)


@dataclass(frozen=True)
class GroundTruth:
    """What a synthetic dataset planted: each pattern's fields and, per period, the
    patterns switched on."""

    patterns: list[list[str]]  # each planted pattern's field names
    regimes: list[list[int]] | None  # per period, the indices of the patterns on (None: all)

    def switched_off(self, periods: list[str]) -> set[str]:
        """The periods (of ``periods``, by name) whose regime switches a pattern off."""
        if self.regimes is None:
            return set()
        every = set(range(len(self.patterns)))
        return {periods[i] for i, on in enumerate(self.regimes)
                if i < len(periods) and set(on) != every}  # fmt: skip


class _Pattern(BaseModel):  # the parts of ground_truth.json read back (more is written)
    fields: list[str]


class _Truth(BaseModel):
    patterns: list[_Pattern]
    regimes: list[list[int]] | None = None


def read_ground_truth(directory: str | Path) -> GroundTruth | None:
    """The ground truth of a prepared synthetic dataset in ``directory`` (None for other
    data: no ``ground_truth.json``); a malformed file is a FinedError naming it."""
    path = Path(directory) / GROUND_TRUTH
    if not path.is_file():
        return None
    try:
        truth = _Truth.model_validate(read_json(path, "synthetic ground truth"))
    except ValidationError as err:
        raise FinedError(format_validation_error(err, f"{path}: malformed ground truth")) from None
    return GroundTruth([p.fields for p in truth.patterns], truth.regimes)
