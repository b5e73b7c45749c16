"""Period keys by calendar unit, boundaries, row blocks; exact held-out tails."""

from datetime import datetime

import numpy as np
import pytest

from fined.data.periods import HoldoutCut, PeriodSplitter
from fined.data.schema import PeriodSpec
from fined.errors import FinedError


def ts(s: str) -> int:
    return int(np.datetime64(s, "s").astype(np.int64))


def test_calendar_units_and_names() -> None:
    t = np.array([ts("1997-09-30T23:59:59"), ts("1997-10-01T00:00:00"), ts("1998-04-22T10:00:00")])
    month = PeriodSplitter(PeriodSpec(by="month"))
    keys = month.keys(t)
    assert [month.name(int(k)) for k in keys] == ["1997-09", "1997-10", "1998-04"]
    day = PeriodSplitter(PeriodSpec(by="day"))
    assert [day.name(int(k)) for k in day.keys(t)] == ["1997-09-30", "1997-10-01", "1998-04-22"]
    # Monday-start weeks: 1997-09-29 was a Monday.
    week = PeriodSplitter(PeriodSpec(by="week"))
    assert week.name(int(week.keys(t)[0])) == "week-1997-09-29"
    hour = PeriodSplitter(PeriodSpec(by="hour"))
    assert hour.name(int(hour.keys(t)[2])) == "1998-04-22 10h"


def test_utc_offset_moves_day_boundaries() -> None:
    t = np.array([ts("2017-05-06T17:00:00")])  # 01:00 on 05-07 in China time
    china = PeriodSplitter(PeriodSpec(by="day", utc_offset_hours=8))
    assert china.name(int(china.keys(t)[0])) == "2017-05-07"


def test_boundaries_and_dropped_rows() -> None:
    spec = PeriodSpec(
        by="boundaries",
        boundaries=[datetime(2020, 1, 1), datetime(2020, 2, 1), datetime(2020, 3, 1)],
    )
    s = PeriodSplitter(spec)
    t = np.array(
        [
            ts("2019-12-31T00:00:00"),
            ts("2020-01-05T00:00:00"),
            ts("2020-02-01T00:00:00"),
            ts("2020-03-01T00:00:00"),
        ]
    )
    assert s.keys(t).tolist() == [-1, 0, 1, -1]


def test_row_blocks() -> None:
    s = PeriodSplitter(PeriodSpec(by="rows", n_periods=3), total_rows=10)
    assert s.keys(np.arange(10)).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_holdout_is_exact_with_ties_broken_by_input_order() -> None:
    times = np.array([1, 2, 3, 3, 3, 3, 4, 5, 5, 5])  # 10 rows, 30% -> 3 rows held out
    cut = HoldoutCut.from_times(times, 0.3)
    assert cut.holdout_rows == 3
    mask, _ = cut.mask(times, 0)
    assert mask.tolist() == [False] * 7 + [True] * 3
    # 40%: the 4 latest are 4,5,5,5 ; 50%: one tie at time 3 (the last one in input order)
    cut = HoldoutCut.from_times(times, 0.5)
    mask, _ = cut.mask(times, 0)
    assert mask.tolist() == [False] * 5 + [True] * 5
    # streamed in two chunks, the running tie count gives the same answer
    first, seen = cut.mask(times[:4], 0)
    second, _ = cut.mask(times[4:], seen)
    assert np.concatenate([first, second]).tolist() == mask.tolist()


def test_checks_name_the_empty_period() -> None:
    s = PeriodSplitter(PeriodSpec(by="month"))
    with pytest.raises(FinedError, match="empty period 1997-11"):
        s.check(
            [332, 333, 335],
            {332: 5, 333: 5, 335: 5},
            {332: "1997-09", 333: "1997-10", 335: "1998-01"},
        )
    with pytest.raises(FinedError, match="period 1997-10 has 1 row"):
        s.check([332, 333], {332: 5, 333: 1}, {332: "1997-09", 333: "1997-10"})


def test_bad_period_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="boundaries"):
        PeriodSpec(by="boundaries")
    with pytest.raises(ValueError, match="exactly one"):
        PeriodSpec(by="rows")
