"""Append-only vocabularies: indices never move, min-count is cumulative over periods."""

import polars as pl
import pyarrow as pa

from fined.data.prepare import prepare
from fined.data.schema import PeriodSpec, PrepareConfig
from fined.data.vocab import OOV, PAD, Vocabulary, grow_vocabulary


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
