"""MovieLens-100K from the recbole wheel, and histories that never leak the future."""

import numpy as np
import pytest

from fined.data.datasets.history import events_before
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "data"
    return out, prepare(PrepareConfig(dataset="movielens100k"), out)


def test_periods_rows_and_ctr(movielens) -> None:
    _, fmap = movielens
    assert [p.name for p in fmap.periods] == [
        "1997-09",
        "1997-10",
        "1997-11",
        "1997-12",
        "1998-01",
        "1998-02",
        "1998-03",
        "1998-04",
    ]
    assert sum(p.rows for p in fmap.periods) == 100_000
    ctr = sum(p.positives for p in fmap.periods) / 100_000
    assert 0.54 < ctr < 0.57  # rating >= 4
    assert fmap.feature("user_id").vocab_size == 943 + 2
    assert fmap.feature("item_id").vocab_size == 1682 + 2
    assert fmap.feature("hist_items").vocab == "item_id"


def test_history_is_strictly_before_each_rating(movielens) -> None:
    """Check sampled histories against the raw file: only earlier events, the latest ones,
    oldest first (a user rates an item once, so an item identifies the event)."""
    import json

    out, _ = movielens
    from fined.data.datasets.movielens import wheel_directory

    raw = np.loadtxt(wheel_directory() / "ml-100k.inter", skiprows=1, dtype=np.int64)
    user, item, time = raw[:, 0], raw[:, 1], raw[:, 3]
    vocab = json.loads((out / "vocab.json").read_text())
    item_of = np.array([0, 0] + vocab["item_id"]["ids"])
    user_of = np.array([0, 0] + vocab["user_id"]["ids"])
    data = PeriodStore(out).load(range(8))
    rng = np.random.default_rng(0)
    for r in rng.choice(len(data), 400, replace=False):
        u, t = user_of[int(data.group[r])], int(data.time[r])
        hist = data.sequences["hist_items"][r].numpy()
        got = item_of[hist[hist > 0]]
        mine = user == u
        when = dict(zip(item[mine].tolist(), time[mine].tolist(), strict=True))
        earlier = {i for i, ti in when.items() if ti < t}
        assert set(got.tolist()) <= earlier  # nothing at or after the rating's own second
        assert len(got) == min(20, len(earlier))
        kept = [when[i] for i in got.tolist()]
        assert kept == sorted(kept)  # oldest first
        dropped = [when[i] for i in earlier - set(got.tolist())]
        assert not dropped or min(kept) >= max(dropped)  # the most recent ones are kept


def test_events_before_excludes_the_same_second_and_later() -> None:
    ev_user = np.array([1, 1, 1, 1, 2, 1])
    ev_time = np.array([10, 20, 30, 40, 5, 15])
    offsets, events = events_before(
        np.array([1, 1, 2, 3]), np.array([30, 31, 6, 100]), ev_user, ev_time, 2
    )
    hist = [events[offsets[i] : offsets[i + 1]].tolist() for i in range(4)]
    assert hist[0] == [5, 1]  # times 15, 20: the event at 30 is the impression's own second
    assert hist[1] == [1, 2]  # times 20, 30 (last 2 of 10, 15, 20, 30)
    assert hist[2] == [4]
    assert hist[3] == []
