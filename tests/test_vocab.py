"""Append-only vocabularies: indices never move, min-count is cumulative over periods."""

import numpy as np
import polars as pl
import pyarrow as pa

from fined.data.feature_map import OOV, PAD
from fined.data.prepare import prepare
from fined.data.schema import PeriodSpec, PrepareConfig
from fined.data.vocab import PeriodCounts, Vocabulary, count_ids, grow_vocabulary


def test_extend_keeps_every_existing_index() -> None:
    vocab = Vocabulary()
    vocab.extend([10, 20, 30])
    before = {v: vocab.index(v) for v in (10, 20, 30)}
    vocab.extend([40, 20, 50])  # 20 already known: must not move or duplicate
    assert {v: vocab.index(v) for v in (10, 20, 30)} == before
    assert vocab.index(40) == 5 and vocab.index(50) == 6
    assert vocab.size_by_period == [5, 7]
    assert len(vocab) == 7 and PAD == 0 and OOV == 1
    assert vocab.index(99) == OOV


def test_lookup_int_and_string_ids_and_nulls() -> None:
    ints = Vocabulary([7, 3, 1_000_000_000_000])  # a huge id forces the hash path
    assert ints.lookup(pa.array([3, 7, None, 5, 1_000_000_000_000])).tolist() == [3, 2, OOV, OOV, 4]
    dense = Vocabulary([7, 3])
    assert dense.lookup(pa.array([3, 7, -1, None, 8])).tolist() == [3, 2, OOV, OOV, OOV]
    strs = Vocabulary(["a", "b"])
    assert strs.lookup(pa.array(["b", "zz", None, "a"])).tolist() == [3, OOV, OOV, 2]


def test_json_round_trip() -> None:
    vocab = Vocabulary()
    vocab.extend(["x", "y"])
    again = Vocabulary.from_json(vocab.to_json())
    assert again.ids == ["x", "y"] and again.size_by_period == [4]


def test_min_count_is_cumulative_and_ids_enter_in_time_order() -> None:
    counts = pl.DataFrame(
        {"value": [1, 2, 2, 3, 3, 4], "period": [0, 0, 1, 1, 2, 2], "count": [5, 1, 1, 1, 1, 9]}
    )
    vocab = grow_vocabulary(counts, n_periods=3, min_count=2)
    # 1 enters at period 0; 2 reaches 2 at period 1; 3 and 4 at period 2 (4 first: more counts)
    assert vocab.ids == [1, 2, 4, 3]
    assert vocab.size_by_period == [3, 4, 6]


def test_preparing_more_periods_leaves_earlier_indices_unchanged(tmp_path) -> None:
    """Extending the data with later periods appends ids; none of the earlier ones moves."""
    import json
    from datetime import datetime

    options = {"n_rows": 6000, "n_periods": 4, "drift": 0.3, "seed": 3}
    short = PrepareConfig(
        dataset="synthetic",
        options=options,
        periods=PeriodSpec(by="day", end=datetime(2024, 1, 3)),
    )
    prepare(short, tmp_path / "short")
    prepare(PrepareConfig(dataset="synthetic", options=options), tmp_path / "long")
    a = json.loads((tmp_path / "short" / "vocab.json").read_text())
    b = json.loads((tmp_path / "long" / "vocab.json").read_text())
    for name, va in a.items():
        vb = b[name]
        assert vb["ids"][: len(va["ids"])] == va["ids"], name
        assert vb["size_by_period"][:2] == va["size_by_period"], name
        assert len(vb["ids"]) > len(va["ids"]) or name not in ("f00", "f01")


def test_capped_vocabulary_hashes_the_tail_into_fixed_buckets() -> None:
    counts = pl.DataFrame(
        {"value": [1, 2, 3, 4, 5], "period": [0, 0, 0, 1, 1], "count": [9, 5, 1, 7, 3]}
    )
    vocab = grow_vocabulary(counts, n_periods=2, min_count=2, max_vocab=3, buckets=4)
    # The first three ids to enter (period 0 by count, then period 1) keep rows of their own,
    # after PAD, OOV and the 4 bucket rows; the buckets exist from the first period on.
    assert vocab.ids == [1, 2, 4] and vocab.first == 6
    assert vocab.size_by_period == [8, 9]
    out = vocab.lookup(pa.array([1, 2, 4, 3, 5, 12345, None])).tolist()
    assert out[:3] == [6, 7, 8]
    hashed = out[3:6]  # the rare id 3, the id beyond the cap 5, an unseen id: buckets
    assert all(2 <= i < 6 for i in hashed) and out[6] == OOV
    assert vocab.lookup(pa.array([5, 3, 12345])).tolist() == hashed  # deterministic
    again = Vocabulary.from_json(vocab.to_json())
    assert again.lookup(pa.array([1, 5, None])).tolist() == [6, hashed[1], OOV]
    strs = Vocabulary(["a"], [3], buckets=8)
    codes = strs.lookup(pa.array(["a", "b", "c", "b"])).tolist()
    assert codes[0] == 10 and codes[1] == codes[3] and all(2 <= c < 10 for c in codes[1:])


def test_hash_buckets_spread_ids_evenly() -> None:
    from fined.data.vocab import hash_buckets

    ids = pa.array(range(100_000))
    share = pl.Series(hash_buckets(ids, 64)).value_counts()["count"]
    assert share.min() > 0.8 * 100_000 / 64 and share.max() < 1.2 * 100_000 / 64
    words = pa.array([f"user{i}" for i in range(50_000)])
    share = pl.Series(hash_buckets(words, 32)).value_counts()["count"]
    assert share.min() > 0.8 * 50_000 / 32 and share.max() < 1.2 * 50_000 / 32


def test_prepare_with_max_vocab_caps_the_table_and_keeps_ids_stable(tmp_path) -> None:
    from fined.data.loader import PeriodStore
    from fined.data.schema import FeatureSpec

    base = PrepareConfig(dataset="synthetic", options={"n_rows": 20_000, "n_periods": 3})
    prepare(base, tmp_path / "plain")
    fmap = PeriodStore(tmp_path / "plain").feature_map
    big = max(fmap.id_features, key=lambda f: f.vocab_size).name  # the largest vocabulary
    features = [
        FeatureSpec(name=f.name, kind="categorical", source=f.source,
                    **({"max_vocab": 50, "hash_buckets": 16} if f.name == big else {}))
        for f in fmap.features if f.kind == "categorical"
    ]  # fmt: skip
    prepare(base.model_copy(update={"features": features}), tmp_path / "capped")
    capped = PeriodStore(tmp_path / "capped")
    user = capped.feature_map.feature(big)
    assert user.vocab_size == 2 + 16 + 50 < fmap.feature(big).vocab_size
    ids = capped.load([0, 1, 2]).ids[:, capped.feature_map.id_features.index(user)]
    assert int(ids.max()) < user.vocab_size and int(ids.min()) >= 2
    assert (ids < 18).float().mean() > 0.1  # much of the traffic lands in the buckets


def test_period_counts_merged_in_bounded_parts_equal_one_count() -> None:
    """Chunks counted apart and merged period by period (a tiny floor: many merges) give the
    counts of the whole column counted at once, and never keep more unmerged rows than the
    merged ones (or the floor)."""
    rng = np.random.default_rng(0)
    ids, periods = rng.integers(0, 500, 20_000), rng.integers(0, 6, 20_000)
    counts = PeriodCounts(floor=300)
    for lo in range(0, len(ids), 700):
        counts.add(count_ids(ids[lo : lo + 700], periods[lo : lo + 700]))
        assert counts._pending <= max(counts.floor, counts._merged)
    want = count_ids(ids, periods).sort(["value", "period"])
    assert counts.frame().sort(["value", "period"]).equals(want)
