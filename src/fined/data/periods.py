"""Cutting rows into consecutive time periods, each with a held-out tail.

A row's *period key* is an integer that orders periods: the calendar unit since the epoch
(hour, day, Monday-start week, month), the boundary interval, the row block, or a key the
source supplies. Keys that occur become periods, in increasing order. Rows the config puts
out of every period (before ``start``, after ``end``, outside the boundaries) are counted and
reported; time stamps outside a plausible window (``earliest`` .. ``latest``) are refused.

Each period keeps its last ``holdout_fraction`` of rows *by time* for validation and for
measuring forgetting. Ties at the cut time are broken by input order, so the held-out share is
exact and, for logs in time order, the held-out rows are the latest ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from fined.data.schema import PeriodSpec
from fined.errors import FinedError

_UNIT_SECONDS = {"hour": 3600, "day": 86400}


def _to_unix(dt: datetime) -> int:
    """Naive datetimes in configs are read as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


class PeriodSplitter:
    """Maps row times (int64 unix seconds, or row numbers for ``by: rows``) to period keys."""

    def __init__(self, spec: PeriodSpec, total_rows: int | None = None) -> None:
        self.spec = spec
        self.offset = int(round(spec.utc_offset_hours * 3600))
        self.rows_per_period = spec.rows_per_period or 1  # rows of a block (by: rows)
        if spec.by == "rows" and spec.n_periods is not None:
            if total_rows is None:
                raise ValueError("by: rows with n_periods needs the total row count")
            self.rows_per_period = max(1, math.ceil(total_rows / spec.n_periods))
        # by: boundaries: period i is [bounds[i], bounds[i + 1])
        self.bounds = np.array([_to_unix(b) for b in spec.boundaries or []], dtype=np.int64)
        self.start = _to_unix(spec.start) if spec.start else None
        self.end = _to_unix(spec.end) if spec.end else None
        self.earliest = _to_unix(spec.earliest)
        latest = spec.latest or datetime.now(timezone.utc) + timedelta(days=365)
        self.latest = _to_unix(latest)

    def keys(self, time: np.ndarray, period_key: np.ndarray | None = None) -> np.ndarray:
        """Period key per row. Calendar keys count units from 1970 (negative before it);
        with boundaries, -1 marks rows before the first or from the last on."""
        by = self.spec.by
        if by == "key":
            if period_key is None:
                raise FinedError("periods.by: key needs a source that supplies period keys")
            return period_key.astype(np.int64, copy=True)
        if by == "rows":
            return time // self.rows_per_period
        if by == "boundaries":
            keys = np.searchsorted(self.bounds, time, side="right") - 1
            keys[keys >= len(self.bounds) - 1] = -1
            return keys
        local = time + self.offset
        if by in _UNIT_SECONDS:
            return local // _UNIT_SECONDS[by]
        if by == "week":
            return (local // 86400 + 3) // 7  # 1970-01-01 was a Thursday
        return local.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)

    @property
    def real_time(self) -> bool:
        """Whether row times are time stamps (not row numbers or source keys)."""
        return self.spec.by not in ("rows", "key")

    def outside(self, time: np.ndarray) -> dict[str, np.ndarray]:
        """Rows that fall in no period, by reason (the config put them out on purpose)."""
        if not self.real_time:
            return {}
        out = {}
        if self.spec.by == "boundaries":
            out["outside periods.boundaries"] = (time < self.bounds[0]) | (time >= self.bounds[-1])
        if self.start is not None:
            out["before periods.start"] = time < self.start
        if self.end is not None:
            out["at or after periods.end"] = time >= self.end
        return out

    def implausible(self, time: np.ndarray) -> np.ndarray:
        """Time stamps outside the plausible window ``[earliest, latest]``."""
        if not self.real_time:
            return np.zeros(len(time), dtype=bool)
        return (time < self.earliest) | (time > self.latest)

    def window_text(self) -> str:
        show = lambda t: str(np.datetime64(t, "s")).replace("T00:00:00", "")  # noqa: E731
        return f"{show(self.earliest)} .. {show(self.latest)}"

    def name(self, key: int, source_names: dict[int, str] | None = None) -> str:
        by = self.spec.by
        if by == "key":
            return (source_names or {}).get(key, str(key))
        if by == "rows":
            return f"rows{key * self.rows_per_period}"
        if by == "boundaries":
            return str(np.datetime64(int(self.bounds[key]), "s")).replace("T00:00:00", "")
        if by == "month":
            return str(np.datetime64(key, "M"))
        if by == "week":
            monday = key * 7 - 3
            return "week-" + str(np.datetime64(monday, "D"))
        if by == "day":
            return str(np.datetime64(key, "D"))
        return str(np.datetime64(key, "h")).replace("T", " ") + "h"

    def check(self, keys: list[int], rows: dict[int, int], names: dict[int, str]) -> None:
        """Every period must have enough rows; calendar units must be contiguous."""
        if not keys:
            raise FinedError("no rows fall into any period (check periods.start/end/boundaries)")
        if self.spec.by == "boundaries":
            missing = [k for k in range(len(self.bounds) - 1) if k not in rows]
            if missing:
                raise FinedError(
                    f"empty period {self.name(missing[0])}: no rows between its boundaries"
                )
        elif self.spec.by in ("hour", "day", "week", "month") and not self.spec.allow_gaps:
            # From the keys that occur, never from the range between the extremes (one outlier
            # would make that range as large as memory).
            jumps = np.flatnonzero(np.diff(np.asarray(keys, dtype=np.int64)) > 1)
            if jumps.size:
                gap = int(keys[int(jumps[0])]) + 1
                raise FinedError(
                    f"empty period {self.name(gap)}: no rows between {names[keys[0]]} and "
                    f"{names[keys[-1]]} (set periods.allow_gaps: true to skip empty periods)"
                )
        for k in keys:
            if rows[k] < self.spec.min_rows:
                raise FinedError(
                    f"period {names[k]} has {rows[k]} row(s); at least {self.spec.min_rows} needed"
                )


@dataclass
class HoldoutCut:
    """Where a period's held-out tail starts: rows with time > ``time``, plus the last
    ``ties_in_holdout`` of the ``ties`` rows whose time equals ``time`` (in input order)."""

    time: int
    ties: int
    ties_in_holdout: int
    holdout_rows: int

    @classmethod
    def from_times(cls, times: np.ndarray, fraction: float) -> HoldoutCut:
        n = len(times)
        n_hold = min(n - 1, max(1, round(n * fraction)))
        t = np.partition(times, n - n_hold)[n - n_hold]
        later = int(np.count_nonzero(times > t))
        ties = int(np.count_nonzero(times == t))
        return cls(int(t), ties, n_hold - later, n_hold)

    def mask(self, times: np.ndarray, ties_seen: int) -> tuple[np.ndarray, int]:
        """Held-out flags for the next rows of this period (in input order)."""
        hold = times > self.time
        eq = np.flatnonzero(times == self.time)
        if eq.size:
            rank = ties_seen + np.arange(eq.size)
            hold[eq] = rank >= self.ties - self.ties_in_holdout
        return hold, ties_seen + int(eq.size)
