"""The ``table`` adapter and its CSV presets (criteo, avazu, taobao_ad_joined, eleme)."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fined.data.datasets import open_source
from fined.data.datasets.presets import ELEME_COLUMNS
from fined.data.schema import PrepareConfig
from fined.errors import FinedError


def source(dataset: str, **kw):
    return open_source(PrepareConfig.model_validate({"dataset": dataset, **kw}))


def read_all(src, chunk_rows: int = 64) -> pa.Table:
    """All rows of a source; also checks that a second pass yields the very same batches."""
    first = list(src.batches(chunk_rows))
    second = list(src.batches(chunk_rows))
    assert len(first) == len(second)
    assert all(a.equals(b) for a, b in zip(first, second, strict=True))
    assert all(b.num_rows <= chunk_rows for b in first)
    return pa.Table.from_batches(first)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def unix(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


# --- criteo -------------------------------------------------------------------------------


def test_criteo_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "criteo_sample.txt"
    src = source("criteo", options={"path": str(path)})
    t = read_all(src)
    rows = csv_rows(path)
    assert t.num_rows == len(rows) == 200
    assert t.column("label").to_pylist() == [int(r["label"]) for r in rows]
    assert t.column("time").to_pylist() == list(range(200))  # no time stamps: row numbers
    assert src.periods.by == "rows" and src.periods.n_periods == 7
    assert t.schema.field("label").type == pa.int8()
    assert t.schema.field("I5").type == pa.float64()
    assert t.schema.field("C1").type == pa.string()
    assert t.column_names[2:] == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert t.column("I1")[0].as_py() is None  # empty numeric -> null
    assert t.column("I3")[0].as_py() == 260.0
    assert t.column("C1")[0].as_py() == rows[0]["C1"]
    assert t.column("C19")[0].as_py() == ""  # empty id -> the id "" (not null)


def test_criteo_original_layout_tab_separated_without_header(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    rows = (fixtures_dir / "criteo_sample.txt").read_text().splitlines()[1:]
    path = tmp_path / "day_0"
    path.write_text("\n".join(r.replace(",", "\t") for r in rows) + "\n")
    tab = read_all(
        source("criteo", options={"path": str(path), "delimiter": "\t", "header": False})
    )
    comma = read_all(source("criteo", options={"path": str(fixtures_dir / "criteo_sample.txt")}))
    assert tab.equals(comma)


def test_chunking_does_not_change_rows(fixtures_dir: Path) -> None:
    src = source("criteo", options={"path": str(fixtures_dir / "criteo_sample.txt")})
    sizes = [b.num_rows for b in src.batches(7)]
    assert sizes == [7] * 28 + [4]
    assert read_all(src, 7).equals(read_all(src, 1000))


# --- avazu --------------------------------------------------------------------------------


def test_avazu_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "avazu_sample.txt"
    src = source("avazu", options={"path": str(path)})
    t = read_all(src)
    rows = csv_rows(path)
    assert t.num_rows == 100
    assert t.column("label").to_pylist() == [int(r["click"]) for r in rows]
    first = datetime.fromtimestamp(t.column("time")[0].as_py(), timezone.utc)
    assert first.date().isoformat() == "2014-10-21" and first.hour == 0
    assert t.column("hour_of_day")[0].as_py() == 0
    assert t.column("weekday")[0].as_py() == 1  # 2014-10-21 was a Tuesday (Monday = 0)
    assert src.periods.by == "day" and src.user_key == "device_id"
    names = [f.name for f in src.features]
    assert not {"id", "click", "hour"} & set(names)
    by_name = {f.name: f for f in src.features}
    assert by_name["device_ip"].source == "user"
    assert by_name["site_id"].source == "item" and by_name["app_domain"].source == "item"
    assert by_name["C14"].source == "context" and by_name["hour_of_day"].source == "context"
    assert t.column("site_id").to_pylist() == [r["site_id"] for r in rows]
    assert t.column("C20").to_pylist()[0] == "-1"  # ids stay text, never floats


def test_avazu_periods_by_hour_override(fixtures_dir: Path) -> None:
    src = source(
        "avazu", options={"path": str(fixtures_dir / "avazu_sample.txt")}, periods={"by": "hour"}
    )
    assert src.periods.by == "hour"


# --- taobao_ad_joined ---------------------------------------------------------------------


def test_taobao_ad_joined_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "taobao_ad_joined_sample.csv"
    src = source("taobao_ad_joined", options={"path": str(path)})
    t = read_all(src)
    rows = csv_rows(path)
    assert t.num_rows == 100 and src.user_key == "userid"
    assert t.column("time").to_pylist() == [unix(r["time_stamp"]) for r in rows]
    assert t.column("time")[0].as_py() == unix("2017-05-06 00:00:00")
    assert t.schema.field("click_sequence").type == pa.list_(pa.string())
    expected = [[x for x in r["click_sequence"].split("^") if x] for r in rows]
    assert t.column("click_sequence").to_pylist() == expected
    assert [] in expected and any(len(s) > 1 for s in expected)  # empty and long ones
    assert t.column("price").to_pylist() == [float(r["price"]) for r in rows]
    seq = next(f for f in src.features if f.name == "click_sequence")
    assert seq.vocab == "adgroup_id" and seq.max_len == 50
    sources = {f.name: f.source for f in src.features}
    assert sources["age_level"] == "user" and sources["brand"] == "item"
    assert sources["pid"] == "context"


# --- eleme --------------------------------------------------------------------------------


def eleme_row(label: int, user: str, shop: str, shops: list[str], sep: str = ";") -> str:
    values = {c: "1" for c in ELEME_COLUMNS}
    values.update(
        label=str(label),
        user_id=user,
        shop_id=shop,
        avg_price="",
        ctr_30="0.25",
        shop_id_list=sep.join(shops),
        price_list=sep.join(["12.5"] * 2),
        times="2020-03-01 10:00:00",
        geohash12="wtw3sjq6n6um",
    )
    for c in ELEME_COLUMNS:
        if c.endswith("_list") and c not in ("shop_id_list", "price_list"):
            values[c] = sep.join(["7", "8"])
    return ",".join(values[c] for c in ELEME_COLUMNS)


def write_eleme(folder: Path, sep: str = ";") -> Path:
    folder.mkdir()
    parts = {  # file -> rows; D10 must come after D2 (natural order), parts in order
        "D10_0.csv": [eleme_row(1, "u5", "s9", ["s1"], sep), eleme_row(0, "u5", "s1", [], sep)],
        "D2_0.csv": [eleme_row(0, "u1", "s1", ["s2", "s3"], sep)] * 2,
        "D1_1.csv": [eleme_row(1, "u2", "s3", ["s1"], sep)],
        "D1_0.csv": [eleme_row(0, "u1", "s2", ["s1", "s2", "s3"], sep)] * 2,
    }
    for name, rows in parts.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    (folder / "README.txt").write_text("not data")
    return folder


def test_eleme_files_periods_and_lists(tmp_path: Path) -> None:
    src = source("eleme", options={"path": str(write_eleme(tmp_path / "eleme"))})
    t = read_all(src)
    assert t.num_rows == 7
    assert t.column("period_key").to_pylist() == [1, 1, 1, 2, 2, 10, 10]
    assert t.column("time").to_pylist() == list(range(7))
    assert src.period_names() == {1: "D1", 2: "D2", 10: "D10"}
    assert src.periods.by == "key" and src.user_key == "user_id"
    assert t.column("label").to_pylist() == [0, 0, 1, 0, 0, 1, 0]
    assert t.column("shop_id_list").to_pylist()[2:6] == [["s1"], ["s2", "s3"], ["s2", "s3"], ["s1"]]
    assert t.column("shop_id_list")[6].as_py() == []
    assert t.column("price_list")[0].as_py() == ["12.5", "12.5"]
    assert t.column("avg_price")[0].as_py() is None and t.column("ctr_30")[0].as_py() == 0.25
    assert t.column("geohash12")[0].as_py() == "wtw3sjq6n6um"
    assert "times" not in t.column_names
    by_name = {f.name: f for f in src.features}
    assert by_name["item_id_list"].vocab == "item_id"
    assert by_name["shop_geohash_6_list"].vocab == "shop_geohash_6"
    assert by_name["timediff_list"].vocab is None
    assert by_name["rank_7"].kind == "numeric" and by_name["rank_7"].source == "item"


def test_eleme_list_delimiter_setting_and_glob(tmp_path: Path) -> None:
    folder = write_eleme(tmp_path / "eleme", sep="|")
    src = source("eleme", options={"path": str(folder / "D1_*.csv"), "list_delimiter": "|"})
    t = read_all(src)
    assert t.column("period_key").to_pylist() == [1, 1, 1]
    assert t.column("shop_id_list")[0].as_py() == ["s1", "s2", "s3"]


# --- generic table ------------------------------------------------------------------------

TABLE_FEATURES = [
    {"name": "user", "kind": "categorical", "source": "user", "column": "uid"},
    {"name": "score", "kind": "numeric"},
    {"name": "hist", "kind": "sequence", "source": "user", "vocab": "user"},
    {"name": "tags", "kind": "sequence", "delimiter": "|"},
]


def write_table(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(["click;ts;uid;score;hist;tags;unused", *lines]) + "\n")
    return path


def table_job(path: Path, **options) -> dict:
    return {
        "options": {
            "path": str(path),
            "delimiter": ";",
            "label": "click",
            "time": "ts",
            "time_format": "%Y/%m/%d %H:%M",
            "list_delimiter": ",",
            **options,
        },
        "features": TABLE_FEATURES,
    }


def test_table_csv(tmp_path: Path) -> None:
    path = write_table(
        tmp_path / "log.csv",
        [
            "1;2024/01/02 03:04;007;1.5;a,b;x|y;zz",
            "0;2024/01/03 00:00;8;;;;",
        ],
    )
    src = source("table", **table_job(path), user_key="user")
    t = read_all(src)
    assert t.column_names == ["label", "time", "user", "score", "hist", "tags"]
    assert t.column("label").to_pylist() == [1, 0]
    assert t.column("time").to_pylist() == [unix("2024-01-02 03:04"), unix("2024-01-03 00:00")]
    assert t.column("user").to_pylist() == ["007", "8"]  # leading zeros kept: ids are text
    assert t.column("score").to_pylist() == [1.5, None]
    assert t.column("hist").to_pylist() == [["a", "b"], []]  # list_delimiter
    assert t.column("tags").to_pylist() == [["x", "y"], []]  # the feature's own delimiter
    assert src.periods.by == "day" and src.user_key == "user"


def test_table_without_time_uses_running_row_numbers_over_files(tmp_path: Path) -> None:
    for day, n in ((3, 2), (12, 3)):
        lines = [f"{i % 2};x;{i};{i};;" + ";" for i in range(n)]
        write_table(tmp_path / f"D{day}_log.csv", lines)
    job = table_job(
        tmp_path / "D*_log.csv", time=None, period_from_file=r"D(\d+)_", period_name="day{key}"
    )
    t = read_all(source("table", **job))
    assert t.column("time").to_pylist() == [0, 1, 2, 3, 4]
    assert t.column("period_key").to_pylist() == [3, 3, 12, 12, 12]
    src = source("table", **{**job, "options": {**job["options"], "period_from_file": None}})
    assert src.periods.by == "rows"
    assert "period_key" not in read_all(src).column_names


def test_table_parquet(tmp_path: Path) -> None:
    path = tmp_path / "part-0.parquet"
    pq.write_table(
        pa.table(
            {
                "label": pa.array([1, 0, 1], pa.int64()),
                "t": pa.array([1_700_000_000_000, 1_700_000_060_000, 1_700_090_000_000]),
                "item": pa.array([10, None, 2**60], pa.int64()),
                "price": pa.array([1, 2, 3], pa.int32()),
                "seq": pa.array([[1, 2], [], [3]], pa.list_(pa.int64())),
                "text": pa.array(["a^b", None, ""]),
            }
        ),
        path,
    )
    features = [
        {"name": "item", "kind": "categorical"},
        {"name": "price", "kind": "numeric"},
        {"name": "seq", "kind": "sequence", "vocab": "item"},
        {"name": "text", "kind": "sequence"},
    ]
    t = read_all(
        source(
            "table",
            options={"path": str(path), "time": "t", "time_format": "unix_ms"},
            features=features,
        ),
        2,
    )
    assert t.column("time").to_pylist() == [1_700_000_000, 1_700_000_060, 1_700_090_000]
    assert t.column("item").to_pylist() == [10, None, 2**60]  # int64 ids, exact
    assert t.column("price").type == pa.float64()
    assert t.column("seq").to_pylist() == [[1, 2], [], [3]]
    assert t.column("text").to_pylist() == [["a", "b"], [], []]


# --- bad input: one clear FinedError each ---------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FinedError, match="no such file"):
        source("criteo", options={"path": str(tmp_path / "nope.txt")})
    with pytest.raises(FinedError, match="no file matches"):
        source("eleme", options={"path": str(tmp_path / "D*_*.csv")})


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("click;ts;uid;score;hist;tags\n1;2024/01/02 03:04;1;1;;\n")
    job = table_job(path)
    job["features"] = [*TABLE_FEATURES, {"name": "city", "kind": "categorical"}]
    src = source("table", **job)
    with pytest.raises(FinedError, match=r"log\.csv: missing column 'city'"):
        list(src.batches(10))


def test_non_binary_label(tmp_path: Path) -> None:
    lines = ["1;2024/01/02 03:04;1;1;;;", "2;2024/01/02 03:04;1;1;;;"]
    path = write_table(tmp_path / "log.csv", lines)
    with pytest.raises(FinedError, match=r"log\.csv: label column 'click': non-binary value"):
        list(source("table", **table_job(path)).batches(10))


def test_unparsable_time(tmp_path: Path) -> None:
    path = write_table(tmp_path / "log.csv", ["1;2024-01-02;1;1;;;"])
    with pytest.raises(FinedError, match=r"time column 'ts': cannot parse '2024-01-02'"):
        list(source("table", **table_job(path)).batches(10))


def test_bad_number_names_file_and_column(tmp_path: Path) -> None:
    path = write_table(tmp_path / "log.csv", ["1;2024/01/02 03:04;1;abc;;;"])
    with pytest.raises(FinedError, match=r"log\.csv: .*'score'"):
        list(source("table", **table_job(path)).batches(10))


def test_bad_option_key(fixtures_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FinedError, match="options: delimeter: Extra inputs are not permitted"):
        source(
            "criteo", options={"path": str(fixtures_dir / "criteo_sample.txt"), "delimeter": "\t"}
        )
    with pytest.raises(FinedError, match="options: .*header: false needs `column_names`"):
        source("table", **table_job(tmp_path, header=False))


def test_table_needs_features_and_a_time_for_calendar_periods(tmp_path: Path) -> None:
    path = write_table(tmp_path / "log.csv", ["1;x;1;1;;;"])
    with pytest.raises(FinedError, match="`features` is required"):
        source("table", options={"path": str(path)})
    with pytest.raises(FinedError, match="periods.by: day needs a time column"):
        source("table", **table_job(path, time=None), periods={"by": "day"})


def test_parquet_files_that_disagree_on_a_type(tmp_path: Path) -> None:
    pq.write_table(pa.table({"label": [0, 1], "item": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"label": [0, 1], "item": ["x", "y"]}), tmp_path / "b.parquet")
    src = source(
        "table",
        options={"path": str(tmp_path / "*.parquet")},
        features=[{"name": "item", "kind": "categorical"}],
    )
    with pytest.raises(FinedError, match=r"b\.parquet: column 'item' is string, earlier rows"):
        list(src.batches(10))


# --- end to end: prepare() into encoded periods ---------------------------------------------


@pytest.fixture
def prepare():
    return pytest.importorskip("fined.data.prepare").prepare


def periods_of(fm) -> list[tuple[str, int]]:
    return [(p.name, p.rows) for p in fm.periods]


@pytest.mark.parametrize(
    ("dataset", "file", "expected"),
    [
        (
            "criteo",
            "criteo_sample.txt",
            [*((f"rows{29 * i}", 29) for i in range(6)), ("rows174", 26)],
        ),  # 7 blocks of ceil(200 / 7) rows
        ("avazu", "avazu_sample.txt", [("2014-10-21", 100)]),
        ("taobao_ad_joined", "taobao_ad_joined_sample.csv", [("2017-05-06", 100)]),
    ],
)
def test_prepare_fixture(
    prepare,
    fixtures_dir: Path,
    tmp_path: Path,
    dataset: str,
    file: str,
    expected: list[tuple[str, int]],
) -> None:
    config = PrepareConfig(
        dataset=dataset, options={"path": str(fixtures_dir / file)}, chunk_rows=37
    )
    fm = prepare(config, tmp_path / "out")
    assert periods_of(fm) == expected
    assert sum(p.rows for p in fm.periods) == sum(n for _, n in expected)
    assert (tmp_path / "out" / "feature_map.json").is_file()


def test_prepare_taobao_sequence_shares_adgroup_vocabulary(
    prepare, fixtures_dir: Path, tmp_path: Path
) -> None:
    path = fixtures_dir / "taobao_ad_joined_sample.csv"
    fm = prepare(
        PrepareConfig(dataset="taobao_ad_joined", options={"path": str(path)}), tmp_path / "out"
    )
    rows = csv_rows(path)
    ids = {r["adgroup_id"] for r in rows} | {
        x for r in rows for x in r["click_sequence"].split("^") if x
    }
    assert fm.feature("click_sequence").vocab == "adgroup_id"
    assert fm.feature("adgroup_id").vocab_size == len(ids) + 2  # + padding and OOV


def test_prepare_eleme(prepare, tmp_path: Path) -> None:
    config = PrepareConfig(dataset="eleme", options={"path": str(write_eleme(tmp_path / "in"))})
    fm = prepare(config, tmp_path / "out")
    assert periods_of(fm) == [("D1", 3), ("D2", 2), ("D10", 2)]


def test_prepare_table(prepare, tmp_path: Path) -> None:
    lines = [f"{i % 2};2024/01/0{1 + i // 3} 0{i}:00;{i};{i};a,b;x" for i in range(6)]
    path = write_table(tmp_path / "log.csv", [f"{line};" for line in lines])
    config = PrepareConfig.model_validate({"dataset": "table", **table_job(path)})
    fm = prepare(config, tmp_path / "out")
    assert periods_of(fm) == [("2024-01-01", 3), ("2024-01-02", 3)]
