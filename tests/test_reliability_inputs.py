"""Nothing silent, round 2 (issue 21, items 3, 6 and 7): the inputs that prepared wrong data
without a word, or ended in a traceback. Each must end in one `error:` line naming the file or
key and the problem, exit code 2, with nothing written, or work as the user meant."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import killed_in_epoch
from fined.data.feature_map import FeatureMap
from test_reliability import (  # noqa: F401  (small, trained: fixtures, asked for with
    DAY0,  # request.getfixturevalue: a parameter of that name would redefine the import)
    log_rows,
    no_leftovers,
    one_error,
    run,
    small,
    table_job,
    trained,
    write_config,
)


def _job(tmp_path: Path, data: Path, features: list[dict] | None = None, **options) -> Path:
    """``table_job``'s prepare config with other features or options."""
    doc = yaml.safe_load(table_job(tmp_path, data).read_text())
    doc["features"] = features or doc["features"]
    doc["options"].update(options)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _prepare(capsys, job: Path, out: Path) -> tuple[int, str, str]:
    return run(capsys, "data", "prepare", job, "--out", out)


# -- 3. silent wrong data -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["holdout", "label", "time", "period_key"])
def test_a_feature_cannot_take_a_reserved_name(tmp_path, capsys, name) -> None:
    """`holdout` prepared with exit 0 and replaced the holdout flags with the user ids;
    `label` and `time` ended in tracebacks."""
    csv = tmp_path / "log.csv"
    csv.write_text("clk,ts,user,ad\n" + log_rows(40))
    features = [
        {"name": name, "kind": "categorical", "column": "user"},
        {"name": "ad", "kind": "categorical"},
    ]
    out = tmp_path / "data"
    code, _, err = _prepare(capsys, _job(tmp_path, csv, features), out)
    one_error(code, err, f"features.{name}", "reserved name")
    no_leftovers(out)


@pytest.mark.parametrize("transform", ["scale", "bucketize"])
@pytest.mark.parametrize("value", ["inf", "-inf"])
def test_a_numeric_value_that_is_not_finite_is_refused(tmp_path, capsys, transform, value) -> None:
    """`inf` with `transform: scale` prepared with exit 0 and a NaN mean: every value NaN."""
    rows = [f"{i % 2},{DAY0 + 3600 * i},u{i % 7},a{i % 3},{i * 0.5}" for i in range(40)]
    rows[5] = rows[5].rsplit(",", 1)[0] + f",{value}"
    csv = tmp_path / "log.csv"
    csv.write_text("clk,ts,user,ad,x\n" + "\n".join(rows) + "\n")
    features = [
        {"name": "user", "kind": "categorical"},
        {"name": "x", "kind": "numeric", "transform": transform},
    ]
    out = tmp_path / "data"
    code, _, err = _prepare(capsys, _job(tmp_path, csv, features), out)
    one_error(code, err, "log.csv", "numeric column 'x'", "row 6 of the input", value)
    no_leftovers(out)


def test_a_column_named_twice_is_refused(tmp_path, capsys) -> None:
    """Two columns `user`: the first was used, silently."""
    csv = tmp_path / "log.csv"
    rows = "".join(f"{i % 2},{DAY0 + 3600 * i},u{i % 7},a{i % 3},v{i % 5}\n" for i in range(40))
    csv.write_text("clk,ts,user,ad,user\n" + rows)
    out = tmp_path / "data"
    code, _, err = _prepare(capsys, table_job(tmp_path, csv), out)
    one_error(code, err, "log.csv", "column 'user' appears more than once")
    no_leftovers(out)


# -- 6. tracebacks on input files ------------------------------------------------------------------
def test_text_that_is_not_utf8_is_refused(tmp_path, capsys) -> None:
    text = "clk,ts,user,ad\n" + log_rows(40)
    out = tmp_path / "data"
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text(text, encoding="utf-16")
    code, _, err = _prepare(capsys, table_job(tmp_path, utf16), out)
    one_error(code, err, "utf16.csv", "UTF-16", "UTF-8")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(("clk,ts,user,ad,r\xe9gion\n" + log_rows(40)).encode("latin-1"))
    code, _, err = _prepare(capsys, table_job(tmp_path, latin1), out)
    one_error(code, err, "latin1.csv", "not UTF-8 text")
    no_leftovers(out)


def test_hidden_files_are_skipped_and_a_file_of_the_other_format_refused(tmp_path, capsys) -> None:
    """`dir_glob: *` matched `.DS_Store` and a stray `.parquet` beside the CSVs: tracebacks."""
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.csv").write_text("clk,ts,user,ad\n" + log_rows(40))
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00\x00\x10\x00\xff\xfe\x80\n")
    out = tmp_path / "data"
    code, stdout, err = _prepare(capsys, table_job(tmp_path, folder), out)
    assert code == 0 and "40 rows" in stdout, err
    shutil.rmtree(out)
    stray = folder / "b.parquet"
    pq.write_table(pa.table({"clk": [0], "ts": [DAY0], "user": ["u"], "ad": ["a"]}), stray)
    code, _, err = _prepare(capsys, table_job(tmp_path, folder), out)
    one_error(code, err, str(stray), "a parquet file among the csv files")
    no_leftovers(out)


def test_a_parquet_column_of_a_type_no_feature_reads_is_named(tmp_path, capsys) -> None:
    """A struct column ended in ArrowNotImplementedError."""
    n = 40
    path = tmp_path / "log.parquet"
    table = {
        "clk": [i % 2 for i in range(n)],
        "ts": [DAY0 + 3600 * i for i in range(n)],
        "user": [{"id": i % 7, "group": "g"} for i in range(n)],
        "ad": [f"a{i % 3}" for i in range(n)],
    }
    pq.write_table(pa.table(table), path)
    out = tmp_path / "data"
    code, _, err = _prepare(capsys, table_job(tmp_path, path), out)
    one_error(code, err, "log.parquet", "column 'user'", "struct<", "categorical feature")
    no_leftovers(out)


def test_a_size_edited_in_model_json_is_refused_before_it_is_allocated(
    request, tmp_path, capsys
) -> None:
    """`embedding_dim: 10**12` in model.json ended in an allocation traceback."""
    data, run_dir = request.getfixturevalue("small"), request.getfixturevalue("trained")
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    meta = json.loads((edited / "model.json").read_text())
    meta["model_config"]["embedding_dim"] = 10**12
    (edited / "model.json").write_text(json.dumps(meta))
    scores = tmp_path / "scores.csv"
    code, _, err = run(
        capsys, "predict", "--run", edited, "--data", data, "--periods", "2", "--out", scores
    )
    one_error(code, err, "model.json", "model_config.embedding_dim", "model.safetensors")
    assert not scores.exists()


def test_an_allocation_the_machine_refuses_is_one_line(request, tmp_path, capsys) -> None:
    """`embedding_dim: 10**12` asked of a new model: PyTorch's allocator refused it with a
    RuntimeError traceback (a MemoryError or a ulimit -v ends the same way)."""
    data = request.getfixturevalue("small")
    out = tmp_path / "model"
    code, _, err = run(capsys, "train", "--data", data, "--model", "deepfm", "--train-periods",
                       "0:1", "--out", out, "--set", "embedding_dim=1000000000000")  # fmt: skip
    one_error(code, err, "out of memory", "GiB asked at once", "embedding_dim")
    assert not out.exists()


# -- 7. smaller breaks -----------------------------------------------------------------------------
@pytest.mark.parametrize("offset", ["+05:00", "+0500", "-01:30", "Z"])
def test_time_stamps_with_a_utc_offset_are_read_as_their_instant(tmp_path, capsys, offset) -> None:
    """`%z` offsets were refused as "not a valid date" (the round trip compared with +0000)."""
    from datetime import datetime, timedelta, timezone

    shift = {"+05:00": 5 * 60, "+0500": 5 * 60, "-01:30": -90, "Z": 0}[offset]
    zone = timezone(timedelta(minutes=shift))
    stamps = [DAY0 + 3600 * i for i in range(40)]
    local = [datetime.fromtimestamp(t, zone).strftime("%Y-%m-%dT%H:%M:%S") for t in stamps]
    rows = "".join(f"{i % 2},{t}{offset},u{i % 7},a{i % 3}\n" for i, t in enumerate(local))
    csv = tmp_path / "log.csv"
    csv.write_text("clk,ts,user,ad\n" + rows)
    out = tmp_path / "data"
    code, _, err = _prepare(capsys, _job(tmp_path, csv, time_format="%Y-%m-%dT%H:%M:%S%z"), out)
    assert code == 0, err
    files = [out / p.file for p in FeatureMap.load(out).periods]
    read = sorted(t for f in files for t in pq.read_table(f).column("time").to_pylist())
    assert read == stamps  # the UTC instants written, whatever the offset


def test_prepare_through_a_symbolic_link_replaces_its_target(tmp_path, capsys) -> None:
    """The swap replaced the link with a directory and left the link renamed beside it."""
    csv = tmp_path / "log.csv"
    csv.write_text("clk,ts,user,ad\n" + log_rows(40))
    store = tmp_path / "store"
    store.mkdir()
    target = store / "data"
    assert _prepare(capsys, table_job(tmp_path, csv), target)[0] == 0
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    csv.write_text("clk,ts,user,ad\n" + log_rows(50))
    code, _, err = _prepare(capsys, table_job(tmp_path, csv), link)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sum(p.rows for p in FeatureMap.load(target).periods) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "link", "log.csv", "store"]
    assert [p.name for p in store.iterdir()] == ["data"]  # no old copy left beside it


def test_a_misspelt_key_in_a_tune_space_names_the_file_and_writes_nothing(
    request, tmp_path, capsys
) -> None:
    """The search failed inside its first trial, without naming the space file, and left a
    search directory that refused the corrected rerun."""
    data = request.getfixturevalue("small")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.lrr": [0.001, 0.003]}))
    out = tmp_path / "search"
    args = ["tune", "train", "--data", data, "--model", "deepfm", "--train-periods", "0:1",
            "--space", space, "--out", out, "--trials", "1", "--sampler", "grid",
            "--set", "embedding_dim=8", "--set", "mlp=[16]", "--set", "train.epochs=1",
            "--set", "train.progress=false"]  # fmt: skip
    code, _, err = run(capsys, *args)
    one_error(code, err, "space.yaml", "train.lrr", "did you mean 'lr'")
    assert not out.exists()
    space.write_text(yaml.safe_dump({"train.lr": [0.001, 0.003]}))
    assert run(capsys, *args)[0] == 0

    config = write_config(tmp_path / "run.yaml", data, ["incremental", "kd"])
    space.write_text(yaml.safe_dump({"strategy.alphaa": [0.5]}))
    code, _, err = run(capsys, "tune", "run", config, "--strategy", "kd", "--space", space,
                       "--out", tmp_path / "run-search", "--trials", "1")  # fmt: skip
    one_error(code, err, "space.yaml", "alphaa")
    assert not (tmp_path / "run-search").exists()


# -- friction -------------------------------------------------------------------------------------
def test_input_messages_show_what_is_wrong(tmp_path, capsys) -> None:
    out = tmp_path / "data"
    spaced = tmp_path / "spaced.csv"
    rows = log_rows(40).splitlines()
    rows[3] = " 0" + rows[3][1:]
    spaced.write_text("clk,ts,user,ad\n" + "\n".join(rows) + "\n")
    code, _, err = _prepare(capsys, table_job(tmp_path, spaced), out)
    one_error(code, err, "label column 'clk'", "' 0'")  # was '?'

    header = tmp_path / "header.csv"
    header.write_text("clk,ts,user,ad\n")
    code, _, err = _prepare(capsys, table_job(tmp_path, header), out)
    line = one_error(code, err, "header.csv", "no rows")
    assert "periods" not in line  # was blamed on the period settings

    ids = tmp_path / "ids.parquet"  # what pandas writes for an integer column with a gap
    users = [float("nan") if i == 4 else float(i % 7) for i in range(40)]
    table = {"clk": [i % 2 for i in range(40)], "ts": [DAY0 + 3600 * i for i in range(40)],
             "user": users, "ad": [f"a{i % 3}" for i in range(40)]}  # fmt: skip
    pq.write_table(pa.table(table), ids)
    code, _, err = _prepare(capsys, table_job(tmp_path, ids), out)
    one_error(code, err, "ids.parquet", "column 'user'", "NaN")
    no_leftovers(out)


def test_an_interrupted_run_says_how_to_continue(request, tmp_path, capsys) -> None:
    """Ctrl-C ended `fined run` and `fined train` with exit code 130 and not a word."""
    data = request.getfixturevalue("small")
    config = write_config(tmp_path / "run.yaml", data, ["incremental"])
    out = tmp_path / "run"
    with killed_in_epoch(1, raises=False):
        code, _, err = run(capsys, "run", config, "--out", out)
    assert code == 130 and "interrupted" in err and "same command again" in err, err
    train = tmp_path / "train"
    with killed_in_epoch(1, raises=False):
        code, _, err = run(capsys, "train", "--data", data, "--model", "deepfm", "--out", train,
                           "--train-periods", "0:1", "--set", "embedding_dim=8")  # fmt: skip
    assert code == 130 and "--resume" in err, err
