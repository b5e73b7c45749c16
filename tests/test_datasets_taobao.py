"""The Taobao raw-tables adapter (``taobao_ad_raw``) on tables written in the exact layout.

There is no public sample of the raw tables, so the tests write them: the trailing space in
``new_user_class_level ``, ``NULL`` brands, empty profile values and a user without profile
included. The history join is checked against a brute-force per-impression reference.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fined.data.datasets import dataset_names, open_source
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.errors import FinedError

HEADERS = {
    "raw_sample.csv": "user,time_stamp,adgroup_id,pid,nonclk,clk",
    "ad_feature.csv": "adgroup_id,cate_id,campaign_id,customer,brand,price",
    "user_profile.csv": "userid,cms_segid,cms_group_id,final_gender_code,age_level,"
    "pvalue_level,shopping_level,occupation,new_user_class_level ",  # trailing space: as shipped
    "behavior_log.csv": "user,time_stamp,btag,cate,brand",
}
PROFILE = (
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
)
CHINA = timezone(timedelta(hours=8))
DAY0 = int(datetime(2017, 5, 6, tzinfo=CHINA).timestamp())  # first day of raw_sample, China
T0 = DAY0 + 1800  # a Saturday, 00:30 in China
DAY = 86_400

Row = tuple  # one CSV row as Python values; None is written as "" (or "NULL" for brands)


def write_tables(root: Path, tables: dict[str, list[Row]]) -> Path:
    """Write the four CSV files in the Tianchi layout (``None`` brand -> ``NULL``)."""
    root.mkdir(parents=True, exist_ok=True)
    for file, rows in tables.items():
        lines = [HEADERS[file]]
        for row in rows:
            cells = ["" if v is None else str(v) for v in row]
            if file == "ad_feature.csv" and row[4] is None:
                cells[4] = "NULL"
            lines.append(",".join(cells))
        (root / file).write_text("\n".join(lines) + "\n")
    return root


def generate(
    seed: int, n_users: int = 40, n_ads: int = 30, n_samples: int = 400, n_events: int = 1500
) -> dict[str, list[Row]]:
    """Random tables in the raw layout: 8 days of impressions, 12 days of behaviour.

    Time stamps are drawn from a coarse grid so that events at exactly an impression's time
    (which must *not* enter its history) and ties between events are frequent.
    """
    rng = np.random.default_rng(seed)
    # Impressions on 8 days from 2017-05-06, events on 12 days from 4 days before, on a
    # 10-minute grid.
    times = np.concatenate(
        [
            DAY0 + 600 * rng.integers(0, 8 * 144, size=n_samples),
            DAY0 - 4 * DAY + 600 * rng.integers(0, 12 * 144, size=n_events),
        ]
    )
    users = rng.integers(1, n_users + 1, size=n_samples + n_events)
    samples = []
    for u, t in zip(users[:n_samples], times[:n_samples], strict=True):
        clk = int(rng.random() < 0.2)
        samples.append(
            (
                int(u),
                int(t),
                int(rng.integers(1, n_ads + 3)),
                f"430548_100{int(rng.integers(7, 9))}",
                1 - clk,
                clk,
            )
        )
    events = [
        (
            int(u),
            int(t),
            str(rng.choice(["pv", "cart", "fav", "buy"])),
            int(rng.integers(1, 20)),
            None if rng.random() < 0.1 else int(rng.integers(1, 9)),
        )
        for u, t in zip(users[n_samples:], times[n_samples:], strict=True)
    ]
    ads = [
        (
            a,
            int(rng.integers(1, 20)),
            int(rng.integers(1, 99)),
            int(rng.integers(1, 50)),
            None if rng.random() < 0.2 else int(rng.integers(1, 9)),
            round(float(rng.uniform(1, 500)), 2),
        )
        for a in range(1, n_ads + 1)
    ]  # ads n+1, n+2: none
    profiles = [
        (u, *(None if rng.random() < 0.15 else int(rng.integers(0, 5)) for _ in PROFILE))
        for u in range(1, n_users)
    ]  # the last user: none
    return {
        "raw_sample.csv": samples,
        "ad_feature.csv": ads,
        "user_profile.csv": profiles,
        "behavior_log.csv": events,
    }


def reference(tables: dict[str, list[Row]], max_len: int) -> list[dict]:
    """Brute force: each impression, its joins, and its history scanned event by event."""
    ads = {}
    for a in tables["ad_feature.csv"]:
        ads.setdefault(a[0], a)
    profiles = {p[0]: p for p in tables["user_profile.csv"]}
    rows = []
    for u, t, ad, pid, _, clk in tables["raw_sample.csv"]:
        past = [e for e in tables["behavior_log.csv"] if e[0] == u and e[1] < t]
        past = sorted(past, key=lambda e: e[1])[-max_len:]  # stable: ties keep file order
        a = ads.get(ad, (ad, None, None, None, None, None))
        p = profiles.get(u, (u, *[None] * len(PROFILE)))
        local = datetime.fromtimestamp(t, CHINA)
        rows.append(
            {
                "label": clk,
                "time": t,
                "userid": u,
                **dict(zip(PROFILE, p[1:], strict=True)),
                "adgroup_id": ad,
                "cate_id": a[1],
                "campaign_id": a[2],
                "customer": a[3],
                "brand": a[4],
                "price": a[5],
                "pid": pid,
                "hour": local.hour,
                "weekday": local.weekday(),
                "hist_cate": [e[3] for e in past],
                "hist_brand": [e[4] for e in past],
                "hist_btag": [e[2] for e in past],
            }
        )
    return rows


def source(root: Path, **options):
    return open_source(PrepareConfig(dataset="taobao_ad_raw", options={"path": root, **options}))


def collect(src, chunk_rows: int = 1000) -> pa.Table:
    return pa.Table.from_batches(list(src.batches(chunk_rows)))


def canonical(rows: list[dict]) -> list[str]:
    """Rows as sortable strings: output order is by bucket, not by file."""
    return sorted(repr(sorted(r.items())) for r in rows)


# A hand-written case: user 1 has events before, at and after its impressions.
HAND = {
    "raw_sample.csv": [
        (1, T0, 11, "430548_1007", 1, 0),
        (1, T0 + 100, 12, "430539_1007", 0, 1),
        (2, T0 + DAY, 99, "430548_1007", 1, 0),  # ad 99 is not in ad_feature
        (3, T0 + 2 * DAY, 11, "430548_1007", 1, 0),  # user 3 has no profile and no events
    ],
    "ad_feature.csv": [(11, 6406, 83237, 1, 95471, 170.0), (12, 6406, 83238, 2, None, 35.5)],
    "user_profile.csv": [(1, 0, 5, 2, 5, None, 3, 0, 3), (2, 1, 2, 1, 3, 2, 3, 0, None)],
    "behavior_log.csv": [
        (1, T0 + 5, "fav", 40, 400),  # after the first impression
        (1, T0 - 50, "pv", 10, 100),
        (1, T0, "buy", 30, 300),  # at exactly the first impression's time: not in its history
        (1, T0 - 10, "cart", 20, None),
        (1, T0 + 100, "pv", 50, 500),  # at the second impression's time
        (2, T0 - DAY, "pv", 7, 70),
        (4, T0 - 99, "pv", 8, 80),  # a user without impressions
    ],
}


def test_registered() -> None:
    assert "taobao_ad_raw" in dataset_names()


def test_history_is_strictly_before_the_impression(tmp_path: Path) -> None:
    src = source(write_tables(tmp_path, HAND), max_len=3)
    rows = {(r["userid"], r["time"]): r for r in collect(src).to_pylist()}
    first, second = rows[(1, T0)], rows[(1, T0 + 100)]
    assert first["hist_cate"] == [10, 20]  # oldest first; T0 and later left out
    assert first["hist_brand"] == [100, None]
    assert first["hist_btag"] == ["pv", "cart"]
    # Events before T0+100: -50, -10, 0, +5; the most recent max_len=3 of them.
    assert second["hist_cate"] == [20, 30, 40]
    assert second["hist_btag"] == ["cart", "buy", "fav"]
    assert rows[(2, T0 + DAY)]["hist_cate"] == [7]
    assert rows[(3, T0 + 2 * DAY)]["hist_cate"] == []


def test_joins_labels_and_calendar(tmp_path: Path) -> None:
    src = source(write_tables(tmp_path, HAND))
    table = collect(src)
    assert table.schema.field("label").type == pa.int8()
    assert table.schema.field("time").type == pa.int64()
    rows = {(r["userid"], r["time"]): r for r in table.to_pylist()}
    r = rows[(1, T0 + 100)]
    assert (
        r["label"],
        r["adgroup_id"],
        r["cate_id"],
        r["customer"],
        r["brand"],
        r["price"],
        r["pid"],
    ) == (1, 12, 6406, 2, None, 35.5, "430539_1007")
    assert r["new_user_class_level"] == 3 and r["pvalue_level"] is None  # empty profile value
    assert (rows[(1, T0)]["hour"], rows[(1, T0)]["weekday"]) == (0, 5)  # 00:30 Sat, China time
    missing_ad = rows[(2, T0 + DAY)]
    assert missing_ad["cate_id"] is None and missing_ad["price"] is None
    assert missing_ad["new_user_class_level"] is None and missing_ad["cms_segid"] == 1
    no_profile = rows[(3, T0 + 2 * DAY)]
    assert all(no_profile[c] is None for c in PROFILE)
    assert src.user_key == "userid"
    assert src.periods.by == "day" and src.periods.utc_offset_hours == 8
    specs = {f.name: f for f in src.features}
    assert specs["hist_cate"].vocab == "cate_id" and specs["hist_brand"].vocab == "brand"
    assert specs["price"].kind == "numeric" and specs["hist_btag"].max_len == 50
    assert set(table.column_names) == {"label", "time", *specs}


@pytest.mark.parametrize(("n_buckets", "max_len", "chunk_rows"), [(1, 50, 1000), (4, 3, 37)])
def test_matches_brute_force_reference(
    tmp_path: Path, n_buckets: int, max_len: int, chunk_rows: int
) -> None:
    tables = generate(seed=n_buckets)
    src = source(
        write_tables(tmp_path / "raw", tables),
        n_buckets=n_buckets,
        max_len=max_len,
        work_dir=tmp_path / "work",
        block_mb=0.01,  # 10 kB: several CSV blocks per file
    )
    (tmp_path / "work").mkdir()
    batches = list(src.batches(chunk_rows))
    assert max(b.num_rows for b in batches) <= chunk_rows
    got = pa.Table.from_batches(batches)
    want = reference(tables, max_len)
    assert got.num_rows == len(want) == len(tables["raw_sample.csv"])
    assert canonical(got.to_pylist()) == canonical(want)
    # Sanity of the generated data: the strict-before rule and truncation are exercised.
    assert any(len(r["hist_cate"]) == max_len for r in want)
    assert any(
        e[0] == s[0] and e[1] == s[1]
        for s in tables["raw_sample.csv"]
        for e in tables["behavior_log.csv"]
    )
    # A second pass gives the same rows in the same order; close() removes the buckets.
    assert pa.Table.from_batches(list(src.batches(chunk_rows))).equals(got)
    assert len(list((tmp_path / "work").iterdir())) == 1
    src.close()
    assert list((tmp_path / "work").iterdir()) == []


def test_selected_features(tmp_path: Path) -> None:
    config = PrepareConfig(
        dataset="taobao_ad_raw",
        options={"path": write_tables(tmp_path, HAND)},
        features=[
            {"name": "ad", "kind": "categorical", "column": "adgroup_id"},
            {"name": "hist_cate", "kind": "sequence"},
        ],
    )
    table = collect(open_source(config))
    assert table.column_names == ["label", "time", "ad", "hist_cate"]


def _corrupt(tables: dict[str, list[Row]], file: str, row: int, col: int, value) -> dict:
    rows = [list(r) for r in tables[file]]
    rows[row][col] = value
    return {**tables, file: [tuple(r) for r in rows]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: (root / "behavior_log.csv").unlink(), "behavior_log.csv: no such file"),
        (
            lambda root: (root / "raw_sample.csv").write_text("user,time_stamp,adgroup_id,pid\n"),
            "missing column(s) clk",
        ),
        (
            lambda root: write_tables(root, _corrupt(HAND, "raw_sample.csv", 1, 5, 2)),
            "label column 'clk': non-binary value 2",
        ),
        (
            lambda root: write_tables(root, _corrupt(HAND, "raw_sample.csv", 2, 1, "2017-05-07")),
            "column 'time_stamp'",
        ),
        (
            lambda root: write_tables(root, _corrupt(HAND, "behavior_log.csv", 0, 1, "x")),
            "behavior_log.csv: In CSV column 'time_stamp'",
        ),
        (
            lambda root: write_tables(root, _corrupt(HAND, "raw_sample.csv", 0, 1, "")),
            "column 'time_stamp' has empty value(s)",
        ),
        (
            lambda root: write_tables(root, _corrupt(HAND, "behavior_log.csv", 0, 2, "click")),
            "unknown value click",
        ),
        (
            lambda root: write_tables(root, _corrupt(HAND, "ad_feature.csv", 0, 5, "inf")),
            "ad_feature.csv: numeric column 'price': row 1 of the input holds inf",
        ),
    ],
)
def test_bad_input_is_a_fined_error(tmp_path: Path, change, message: str) -> None:
    root = write_tables(tmp_path, HAND)
    change(root)
    with pytest.raises(FinedError) as err:
        collect(source(root))
    assert message in str(err.value)


def test_bad_options(tmp_path: Path) -> None:
    root = write_tables(tmp_path, HAND)
    with pytest.raises(FinedError, match=r"options: maxlen: Extra inputs"):
        source(root, maxlen=5)
    with pytest.raises(FinedError, match=r"options: max_len: "):
        source(root, max_len=0)
    with pytest.raises(FinedError, match=r"no such column"):
        open_source(
            PrepareConfig(
                dataset="taobao_ad_raw",
                options={"path": root},
                features=[{"name": "age", "kind": "categorical"}],
            )
        )


def test_empty_behaviour_log_gives_empty_histories(tmp_path: Path) -> None:
    table = collect(source(write_tables(tmp_path, {**HAND, "behavior_log.csv": []})))
    assert table.num_rows == 4
    assert all(h == [] for h in table.column("hist_brand").to_pylist())


def test_no_impressions_is_a_fined_error(tmp_path: Path) -> None:
    with pytest.raises(FinedError, match="raw_sample.csv: no rows"):
        collect(source(write_tables(tmp_path, {**HAND, "raw_sample.csv": []})))


def test_prepare_end_to_end(tmp_path: Path) -> None:
    """The adapter through the two-pass encoder: one period per China day, every impression."""
    tables = generate(seed=7)
    root = write_tables(tmp_path / "raw", tables)
    config = PrepareConfig(
        dataset="taobao_ad_raw",
        options={"path": root, "n_buckets": 3, "max_len": 5, "work_dir": tmp_path / "work"},
        chunk_rows=64,
    )
    (tmp_path / "work").mkdir()
    fmap = prepare(config, tmp_path / "out")
    assert list((tmp_path / "work").iterdir()) == []  # prepare closed the source: buckets gone
    days = [datetime.fromtimestamp(r[1], CHINA).date() for r in tables["raw_sample.csv"]]
    assert [p.name for p in fmap.periods] == [str(d) for d in sorted(set(days))]
    assert len(fmap.periods) == 8
    assert [p.rows for p in fmap.periods] == [days.count(d) for d in sorted(set(days))]
    assert sum(p.rows for p in fmap.periods) == len(tables["raw_sample.csv"])
    assert sum(p.positives for p in fmap.periods) == sum(r[5] for r in tables["raw_sample.csv"])
    assert fmap.user_key == "userid"
    info = {f.name: f for f in fmap.features}
    assert info["hist_cate"].vocab == "cate_id" and info["hist_cate"].max_len == 5


def test_taobao_ad_dispatches_on_the_layout(tmp_path: Path, fixtures_dir: Path) -> None:
    """`taobao_ad` reads a directory of raw tables, or the joined TaobaoAd_x1 CSV."""
    root = write_tables(tmp_path / "raw", generate(seed=3, n_samples=50, n_events=100))
    raw = prepare(PrepareConfig(dataset="taobao_ad", options={"path": root}), tmp_path / "a")
    assert sum(p.rows for p in raw.periods) == 50 and raw.feature("hist_cate").max_len == 50
    csv = fixtures_dir / "taobao_ad_joined_sample.csv"
    joined = prepare(PrepareConfig(dataset="taobao_ad", options={"path": csv}), tmp_path / "b")
    assert sum(p.rows for p in joined.periods) == 100
    assert joined.feature("click_sequence").vocab == "adgroup_id"
    with pytest.raises(FinedError, match="options.layout"):
        prepare(
            PrepareConfig(dataset="taobao_ad", options={"path": csv, "layout": "flat"}),
            tmp_path / "c",
        )
