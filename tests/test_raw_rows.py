"""Raw rows to score take one path, for a serving side (`RawRowEncoder`) and for `fined
predict --rows`: given with the log's own column names, read from a dict, a CSV or a Parquet
file, and checked as `fined data prepare` checked the log (a NaN or text id, `inf`: one
error naming the column and the feature); zero rows give zero scores."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fined.cli import main
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.raw_rows import RawRowEncoder
from fined.data.schema import PrepareConfig
from fined.errors import FinedError
from test_reliability import one_error, run

DAY0 = 1_704_067_200  # 2024-01-01 00:00 UTC
COLUMNS = ["uid", "ad", "price", "hist"]  # the log's names; feature `user` reads `uid`


def _log(n: int = 96) -> dict[str, list]:
    """Two days of rows, every half hour; users u7..u9 first come on the second day."""
    return {
        "clk": [int(i * 7 % 3 == 0) for i in range(n)],
        "ts": [DAY0 + 1800 * i for i in range(n)],
        "uid": [f"u{i % 7 if i < 48 else i % 10}" for i in range(n)],
        "ad": [f"a{i % 3}" for i in range(n)],
        "price": [i * 0.5 for i in range(n)],
        "hist": ["^".join(f"a{j % 4}" for j in range(i % 5)) for i in range(n)],
    }


def _job(path: Path, renamed: bool = True) -> dict:
    """The log's prepare job; feature `user` reads column `uid` (``renamed``) or `user`."""
    user = {"column": "uid"} if renamed else {}
    return {
        "dataset": "table",
        "options": {"path": str(path), "label": "clk", "time": "ts"},
        "features": [
            {"name": "user", **user, "kind": "categorical", "source": "user"},
            {"name": "ad", "kind": "categorical", "source": "item"},
            {"name": "price", "kind": "numeric", "n_buckets": 4},
            {"name": "hist", "kind": "sequence", "vocab": "ad", "max_len": 3},
        ],
    }


def _csv(path: Path, rows: dict[str, list]) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    """The log as CSV, prepared (by day) into `data` beside it."""
    tmp = tmp_path_factory.mktemp("log")
    path = _csv(tmp / "log.csv", _log())
    prepare(PrepareConfig.model_validate(_job(path)), tmp / "data")
    return path


@pytest.fixture(scope="module")
def model(log, tmp_path_factory) -> Path:
    """DeepFM trained on the first day."""
    out = tmp_path_factory.mktemp("model") / "run"
    args = ["train", "--data", log.parent / "data", "--model", "deepfm", "--train-periods", "0"]
    args += ["--out", out, "--set", "embedding_dim=4", "--set", "mlp=[8]"]
    assert main([str(a) for a in [*args, "--set", "train.epochs=2"]]) == 0
    return out


def _day(n: int) -> dict[str, list]:
    """Day ``n``'s rows of the log, in file order."""
    return {k: v[48 * n : 48 * (n + 1)] for k, v in _log().items()}


def _stored(data: Path, period: int) -> dict[str, np.ndarray]:
    rows = PeriodStore(data).load([period])
    order = np.argsort(rows.time.numpy(), kind="stable")  # file order: the log is in time order
    return {
        "ids": rows.ids.numpy()[order],
        **{k: v.numpy()[order] for k, v in rows.sequences.items()},
    }


def test_raw_rows_are_encoded_as_the_prepared_data(tmp_path) -> None:
    lines = ["clk,ts,user,ad,price"] + [
        f"{i % 2},{1_704_067_200 + 3600 * i},u{i % 7},a{i % 3},{i * 0.5}" for i in range(48)
    ]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    job = {
        "dataset": "table",
        "options": {"path": str(tmp_path / "log.csv"), "label": "clk", "time": "ts"},
        "features": [
            {"name": "user", "kind": "categorical", "source": "user"},
            {"name": "ad", "kind": "categorical", "source": "item"},
            {"name": "price", "kind": "numeric", "n_buckets": 4},
        ],
    }
    prepare(PrepareConfig.model_validate(job), tmp_path / "data")
    stored = PeriodStore(tmp_path / "data").load([0])
    raw = pl.read_csv(tmp_path / "log.csv").head(24)  # day 1, in file order
    encoded = RawRowEncoder(tmp_path / "data").encode(
        {"user": raw["user"].to_list(), "ad": raw["ad"].to_list(), "price": raw["price"].to_list()}
    )
    order = np.argsort(stored.time.numpy(), kind="stable")
    np.testing.assert_array_equal(encoded["ids"], stored.ids.numpy()[order])
    unseen = RawRowEncoder(tmp_path / "data").encode(
        {"user": ["new"], "ad": ["a1"], "price": [1.0]}
    )
    assert unseen["ids"][0, 0] == 1  # OOV


def test_raw_rows_take_the_logs_own_column_names_from_a_dict_a_csv_or_parquet(
    log, tmp_path
) -> None:
    """`uid`, as the log names it, not the feature's name `user`; sequences as the log's text
    or as lists."""
    data = log.parent / "data"
    encoder = RawRowEncoder(data)
    assert encoder.columns == COLUMNS
    day = _day(1)
    expected = _stored(data, 1)
    as_dict = encoder.encode({c: day[c] for c in COLUMNS})
    lists = {**day, "hist": [h.split("^") if h else [] for h in day["hist"]]}
    pq.write_table(pa.table({c: lists[c] for c in ["ts", *COLUMNS]}), tmp_path / "day.parquet")
    from_csv = [e for _, e in encoder.read(_csv(tmp_path / "day.csv", day))]
    from_parquet = [e for _, e in encoder.read(tmp_path / "day.parquet")]
    for got in (as_dict, from_csv[0], from_parquet[0]):
        np.testing.assert_array_equal(got["ids"], expected["ids"])
        np.testing.assert_array_equal(got["hist"], expected["hist"])
    with pytest.raises(FinedError, match=r"no column 'uid' \(feature 'user'\)"):
        encoder.encode(
            {"user": day["uid"], "ad": day["ad"], "price": day["price"], "hist": day["hist"]}
        )


@pytest.fixture(scope="module")
def int_ids(tmp_path_factory) -> Path:
    """The log with integer user ids in a column `user`, from Parquet: the vocabulary of
    `user` holds ints."""
    tmp = tmp_path_factory.mktemp("ints")
    rows = {**_log(), "uid": [i % 7 for i in range(96)]}
    rows["user"] = rows.pop("uid")
    pq.write_table(pa.table(rows), tmp / "log.parquet")
    prepare(PrepareConfig.model_validate(_job(tmp / "log.parquet", False)), tmp / "data")
    return tmp / "data"


BAD = {
    "an id that is NaN": ("user", [1.0, math.nan], "column 'user': an id is NaN"),
    "a text id where ids are integers": (
        "user", ["3", "u3"], "column 'user': id 'u3' is not an integer"),
    "inf": ("price", [1.0, math.inf], "numeric column 'price': row 2 of the input holds inf"),
    "-inf": ("price", [-math.inf, 1.0], "numeric column 'price': row 1 of the input holds -inf"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_a_raw_value_prepare_would_refuse_is_refused_naming_its_feature(int_ids, case) -> None:
    """Serving put `inf` in the top bucket and ended a NaN or text id in pyarrow's own error."""
    column, values, message = BAD[case]
    rows = {"user": [3, 4], "ad": ["a1", "a2"], "price": [1.0, 2.0], "hist": [["a1"], []]}
    with pytest.raises(FinedError) as err:
        RawRowEncoder(int_ids).encode({**rows, column: values})
    assert str(err.value).startswith(f"raw rows: {message}")
    good = RawRowEncoder(int_ids).encode({**rows, "user": ["3", ""]})  # text read as integers
    assert good["ids"][0, 0] == RawRowEncoder(int_ids).encode(rows)["ids"][0, 0] >= 2
    assert good["ids"][1, 0] == 1  # an empty field: a missing id, OOV


def test_zero_raw_rows_encode_to_zero_rows(int_ids) -> None:
    encoded = RawRowEncoder(int_ids).encode({c: [] for c in ["user", "ad", "price", "hist"]})
    assert encoded["ids"].shape == (0, 3)  # user, ad, the price's bucket
    assert encoded["hist"].shape == (0, 3)


def test_predict_scores_raw_rows_as_it_scores_the_prepared_rows(log, model, tmp_path) -> None:
    """The second day given as raw rows (CSV and Parquet, with a column to pass through)
    scores as the prepared second day does: users first seen that day are OOV to a model of
    the first, either way."""
    data = log.parent / "data"
    prepared = tmp_path / "prepared.csv"
    args = ["predict", "--run", model, "--data", data]
    assert main([str(a) for a in [*args, "--periods", "1", "--out", prepared]]) == 0
    expected = pl.read_csv(prepared).sort("time")["score"].to_numpy()
    day = {**_day(1), "request": [f"r{i}" for i in range(48)]}
    pq.write_table(pa.table(day), tmp_path / "day.parquet")
    for rows in (_csv(tmp_path / "day.csv", day), tmp_path / "day.parquet"):
        out = tmp_path / f"{rows.suffix[1:]}_scores.parquet"
        extra = ["--columns", "request"]
        assert main([str(a) for a in [*args, "--rows", rows, "--out", out, *extra]]) == 0
        scores = pl.read_parquet(out)
        assert scores.columns == ["row", "score", "request"]
        assert scores["request"].to_list() == day["request"]
        np.testing.assert_allclose(scores["score"].to_numpy(), expected, atol=1e-6, rtol=0)


def test_predict_refuses_raw_rows_in_prepares_words(log, model, tmp_path, capsys) -> None:
    """`inf` in a file of rows to score: one error line, exit 2, the words prepare says of
    the same value in a log."""
    day = {**_day(1), "price": [1.0, math.inf] + _day(1)["price"][2:]}
    rows = _csv(tmp_path / "rows.csv", day)
    code, _, err = run(capsys, "predict", "--run", model, "--data", log.parent / "data",
                       "--rows", rows, "--out", tmp_path / "s.csv")  # fmt: skip
    line = one_error(code, err, "rows.csv", "numeric column 'price'", "row 2", "inf")
    assert not (tmp_path / "s.csv").exists()
    bad_log = _csv(tmp_path / "log.csv", {k: v[:48] + day[k] for k, v in _log().items()})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(bad_log)))
    code, _, err = run(capsys, "data", "prepare", job, "--out", tmp_path / "d")
    said = one_error(code, err, "log.csv", "row 50")

    def words(line: str, file: str) -> str:  # the message after the file, its row number out
        return re.sub(r"row \d+ ", "", line.split(f"{file}: ", 1)[1])

    assert words(line, "rows.csv") == words(said, "log.csv")


def test_predict_of_a_file_of_no_rows_writes_no_scores(log, model, tmp_path) -> None:
    rows = tmp_path / "none.csv"
    rows.write_text(",".join(COLUMNS) + "\n")
    out = tmp_path / "scores.csv"
    args = ["predict", "--run", model, "--data", log.parent / "data", "--rows", rows]
    assert main([str(a) for a in [*args, "--out", out]]) == 0
    assert pl.read_csv(out).height == 0


def test_predict_takes_periods_or_rows(log, model, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "predict", "--run", model, "--data", log.parent / "data",
                       "--out", tmp_path / "s.csv")  # fmt: skip
    one_error(code, err, "--periods", "--rows")


def test_a_column_derived_from_the_time_stamp_is_derived_again(tmp_path) -> None:
    """A job that derives `hour` from the time stamp: rows to score give the time stamp, as
    the log did, not the derived column."""
    log = _csv(tmp_path / "log.csv", _log())
    job = _job(log)
    job["options"]["derive_from_time"] = {"hour": "hour_of_day"}
    job["features"].append({"name": "hour", "kind": "categorical", "source": "context"})
    prepare(PrepareConfig.model_validate(job), tmp_path / "data")
    encoder = RawRowEncoder(tmp_path / "data")
    assert encoder.columns == [*COLUMNS, "ts"]
    got = encoder.encode({c: _day(1)[c] for c in encoder.columns})
    np.testing.assert_array_equal(got["ids"], _stored(tmp_path / "data", 1)["ids"])
