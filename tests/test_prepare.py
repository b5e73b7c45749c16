"""End to end on the synthetic source: prepare, the encoded files, the loader."""

import json
from datetime import datetime

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fined.data.feature_map import OOV, FeatureMap
from fined.data.loader import BatchLoader, PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PeriodSpec, PrepareConfig

OPTIONS = {"n_rows": 12_000, "n_periods": 4, "drift": 0.2, "n_numeric": 2, "seed": 5}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    fmap = prepare(PrepareConfig(dataset="synthetic", options=OPTIONS, chunk_rows=5000), out)
    return out, fmap


def test_periods_rows_and_holdout(prepared) -> None:
    out, fmap = prepared
    assert [p.rows for p in fmap.periods] == [3000] * 4
    assert [p.name for p in fmap.periods] == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
    ]
    for p in fmap.periods:
        table = pq.read_table(out / p.file)
        assert table.num_rows == p.rows
        hold = table.column("holdout").to_numpy(zero_copy_only=False)
        time = table.column("time").to_numpy()
        assert hold.sum() == p.holdout_rows == 300
        assert time[hold].min() >= time[~hold].max()  # the held-out slice is the latest 10 %
        assert table.column("label").to_numpy().sum() == p.positives


def test_feature_map_round_trip_and_ground_truth(prepared) -> None:
    out, fmap = prepared
    again = FeatureMap.load(out)
    assert again.fingerprint == fmap.fingerprint
    assert [f.name for f in again.id_features] == [f"f{j:02d}" for j in range(12)] + ["x00", "x01"]
    truth = json.loads((out / "ground_truth.json").read_text())
    assert len(truth["patterns"]) == 4 and len(truth["regimes"]) == 4
    assert all(2 <= len(p["fields"]) <= 4 for p in truth["patterns"])


def test_prepare_is_deterministic(prepared, tmp_path) -> None:
    out, fmap = prepared
    again = prepare(
        PrepareConfig(dataset="synthetic", options=OPTIONS, chunk_rows=777), tmp_path / "b"
    )
    assert again.fingerprint == fmap.fingerprint
    for p in fmap.periods:
        assert pq.read_table(out / p.file).equals(pq.read_table(tmp_path / "b" / p.file))


def test_loader_parts_and_shapes(prepared) -> None:
    out, fmap = prepared
    store = PeriodStore(out)
    train = store.load([0, 1], part="train")
    hold = store.load(["2024-01-02"], part="holdout")
    assert len(train) == 2 * 2700 and len(hold) == 300
    assert train.ids.shape == (5400, 14) and train.ids.dtype == torch.int32
    assert train.floats.shape == (5400, 0)
    assert set(train.label.unique().tolist()) <= {0.0, 1.0}
    assert train.group is not None and torch.equal(train.group, train.ids[:, 0].long())


def test_known_through_maps_later_ids_to_oov(prepared) -> None:
    out, fmap = prepared
    store = PeriodStore(out)
    raw = store.load([3])
    honest = store.load([3], known_through=0)
    limit = fmap.feature("f00").vocab_size_by_period[0]
    later = raw.ids[:, 0] >= limit
    assert later.any()
    assert (honest.ids[later, 0] == OOV).all()
    assert torch.equal(honest.ids[~later, 0], raw.ids[~later, 0])
    assert torch.equal(honest.group, raw.group)  # gAUC groups keep the real user


def test_batch_loader_covers_every_row_once_and_reshuffles(prepared) -> None:
    out, _ = prepared
    data = PeriodStore(out).load([0])
    loader = BatchLoader(data, batch_size=512, shuffle=True, seed=1)
    seen = torch.cat([b.time for b in loader])
    assert torch.equal(seen.sort().values, data.time.sort().values)
    first = [b.time[:5].tolist() for b in loader][0]
    assert [b.time[:5].tolist() for b in loader][0] == first  # same epoch: same order
    loader.set_epoch(1)
    assert [b.time[:5].tolist() for b in loader][0] != first
    assert len(loader) == int(np.ceil(len(data) / 512))


def test_a_failed_prepare_leaves_the_previous_output_intact(prepared, tmp_path) -> None:
    from fined.errors import FinedError

    out = tmp_path / "data"
    prepare(PrepareConfig(dataset="synthetic", options={"n_rows": 1000, "n_periods": 2}), out)
    before = (out / "feature_map.json").read_text()
    # Fails half-way, after pass 1, inside the temporary directory: the middle period is empty.
    bounds = [datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2023, 12, 31)]
    bad = PrepareConfig(
        dataset="synthetic",
        options={"n_rows": 1000, "n_periods": 2},
        periods=PeriodSpec(by="boundaries", boundaries=sorted(bounds) + [datetime(2024, 1, 3)]),
    )
    with pytest.raises(FinedError, match="empty period 2023-12-31"):
        prepare(bad, out)
    assert (out / "feature_map.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary directory left


def test_refuses_to_overwrite_a_foreign_directory(tmp_path) -> None:
    from fined.errors import FinedError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FinedError, match="not a fined output"):
        prepare(
            PrepareConfig(dataset="synthetic", options={"n_rows": 1000, "n_periods": 2}),
            tmp_path / "mine",
        )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
