"""Nothing lost, nothing silent: what `fined` does when a user, their files or their machine
misbehave. One test per defect found by trying to break it: each asserts the exit code 2, the
one `error:` line and its message, and that nothing of the user's was touched (file hashes
before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import killed_in_epoch, write_run_config
from fined.cli import main
from fined.data.feature_map import FeatureMap
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.errors import FinedError
from fined.knowledge.knowledge_base import KBConfig
from fined.train.config import TrainConfig
from fined.train.kb_builder import build_knowledge_base
from fined.train.trainer import Trainer

SMALL = {"embedding_dim": 8, "mlp": [16]}
SYNTHETIC = {"n_rows": 3000, "n_periods": 4, "n_fields": 4, "cardinality": 30, "seed": 1}


# -- helpers ---------------------------------------------------------------------------------
def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *fragments: str) -> str:
    """Exit code 2 and exactly one line, ``error: ...``, holding every fragment."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def hashes(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (files by content, directories and links by name)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def cli(*args, env: dict | None = None, preexec=None, prefix=(), timeout: float = 600):
    """`fined ARGS` in a fresh process: (exit code, stdout, stderr)."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "fined.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


def write_config(path: Path, data: Path, strategies: list, **extra) -> Path:
    """A run config sized for the small dataset here (its periods hold a few hundred rows)."""
    quick = {
        "model_settings": {"deepfm": SMALL},
        "train": {"batch_size": 256, "lr": 0.003, "epochs": 2, "patience": 1},
        "kb": {"slots": 4, "dim": 8, "l0_warmup_steps": 5},
        "kb_train": {"batch_size": 256, "epochs": 2, "patience": 1},
    }
    return write_run_config(path, data, strategies, **{**quick, **extra})


def table_job(tmp_path: Path, data: Path, name: str = "job.yaml", **periods) -> Path:
    doc = {
        "dataset": "table",
        "options": {"path": str(data), "label": "clk", "time": "ts", "time_format": "unix"},
        "periods": {"by": "day", **periods},
        "features": [
            {"name": "user", "kind": "categorical", "source": "user"},
            {"name": "ad", "kind": "categorical", "source": "item"},
        ],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


DAY0 = 1_704_067_200  # 2024-01-01 00:00 UTC


def log_rows(n: int, start: int = DAY0, step: int = 3600) -> str:
    return "".join(f"{i % 2},{start + step * i},u{i % 7},a{i % 3}\n" for i in range(n))


def no_leftovers(out: Path) -> None:
    """Neither ``out`` nor a temporary sibling of it exists."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def dead_pid() -> int:
    """The id of a process that has just ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "data"
    prepare(PrepareConfig(dataset="synthetic", options=SYNTHETIC), out)
    return out


@pytest.fixture(scope="module")
def trained(small, tmp_path_factory) -> Path:
    """A `fined train` run directory (DeepFM, one epoch)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "--data", small, "--model", "deepfm", "--train-periods", "0:1"]
    args += ["--out", out, "--set", "embedding_dim=8", "--set", "train.epochs=1"]
    assert main([str(a) for a in args]) == 0
    return out


def kb_build(data: Path, periods: str, out: Path) -> list:
    """`fined kb build` of a small KB (4 slots of 8) in a few quick steps."""
    sets = ["slots=4", "dim=8", "l0_warmup_steps=2", "train.epochs=2", "train.batch_size=128"]
    args = ["kb", "build", "--data", data, "--periods", periods, "--out", out]
    return args + [x for s in [*sets, "train.progress=false"] for x in ("--set", s)]


@pytest.fixture(scope="module")
def kb_dir(small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kb") / "kb"
    assert main([str(a) for a in kb_build(small, "0", out)]) == 0
    return out


# -- 1. --restart and --out never touch what a run did not write ------------------------------
def test_restart_never_deletes_what_a_run_did_not_write(small, tmp_path, capsys) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "config.json").write_text("{}\n")
    before = hashes(project)
    config = write_config(tmp_path / "run.yaml", small, ["incremental"])
    for extra in ([], ["--restart"]):
        code, _, err = run(capsys, "run", config, "--out", project, *extra)
        line = one_error(code, err, str(project), "not a fined output")
        assert "--restart" not in line  # the refusal no longer suggests deleting it
    assert hashes(project) == before

    out = tmp_path / "out"
    assert run(capsys, "run", config, "--out", out)[0] == 0
    (out / "notes.txt").write_text("my notes\n")
    first = pl.read_csv(out / "results.csv").drop("train_seconds", "kb_seconds")
    assert run(capsys, "run", config, "--out", out, "--restart")[0] == 0
    assert (out / "notes.txt").read_text() == "my notes\n"  # beside the run: kept
    assert pl.read_csv(out / "results.csv").drop("train_seconds", "kb_seconds").equals(first)

    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    before = hashes(out)
    code, _, err = run(capsys, "run", config, "--out", link, "--restart")
    one_error(code, err, "symbolic link")
    assert hashes(out) == before


# -- 2. one outlier time stamp: refused by row and value, in bounded memory --------------------
def _limited_memory() -> None:
    cap = 8 << 30  # address space: today's code needed 22.5 GB for this file
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_an_outlier_time_stamp_is_refused_naming_its_row(tmp_path, capsys) -> None:
    csv = tmp_path / "log.csv"
    csv.write_text("clk,ts,user,ad\n" + log_rows(40) + "1,99999999999999,u1,a1\n")
    out = tmp_path / "data"
    code, _, err = cli("data", "prepare", table_job(tmp_path, csv), "--out", out,
                       preexec=_limited_memory)  # fmt: skip
    one_error(code, err, "row 41 of the input", "99999999999999", "periods.latest")
    no_leftovers(out)

    job = table_job(tmp_path, csv, "skip.yaml", invalid_time="skip")
    code, stdout, _ = run(capsys, "data", "prepare", job, "--out", out)
    assert code == 0 and "40 rows" in stdout and "left out 1 row with a time stamp" in stdout
    fmap = FeatureMap.load(out)
    assert sum(p.rows for p in fmap.periods) == 40
    assert list(fmap.skipped_rows.values()) == [1]


# -- 3. rows are never dropped silently: before 1970, or with no time stamp --------------------
def test_time_stamps_before_1970_are_refused_or_kept_never_dropped(tmp_path, capsys) -> None:
    csv = tmp_path / "old.csv"
    csv.write_text("clk,ts,user,ad\n" + log_rows(60, start=-2 * 86400))  # from 1969-12-30
    out = tmp_path / "data"
    code, _, err = run(capsys, "data", "prepare", table_job(tmp_path, csv), "--out", out)
    one_error(code, err, "row 1 of the input", "1969-12-30", "periods.earliest")
    no_leftovers(out)
    wide = table_job(tmp_path, csv, "wide.yaml", earliest="1960-01-01")
    code, stdout, _ = run(capsys, "data", "prepare", wide, "--out", out)
    assert code == 0 and "60 rows" in stdout
    names = [p.name for p in FeatureMap.load(out).periods]
    assert names == ["1969-12-30", "1969-12-31", "1970-01-01"]


def test_a_null_native_time_stamp_is_refused_or_counted(tmp_path, capsys) -> None:
    stamps = [DAY0 + 3600 * i for i in range(30)]
    stamps[7] = None
    table = pa.table(
        {
            "clk": pa.array([i % 2 for i in range(30)], pa.int8()),
            "ts": pa.array(stamps, pa.timestamp("s")),
            "user": pa.array([f"u{i % 5}" for i in range(30)]),
            "ad": pa.array([f"a{i % 3}" for i in range(30)]),
        }
    )
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    out = tmp_path / "data"
    code, _, err = run(capsys, "data", "prepare", table_job(tmp_path, path), "--out", out)
    one_error(code, err, "row 8 of the input has no time stamp", "invalid_time: skip")
    no_leftovers(out)
    job = table_job(tmp_path, path, "skip.yaml", invalid_time="skip")
    code, stdout, _ = run(capsys, "data", "prepare", job, "--out", out)
    assert code == 0 and "29 rows" in stdout and "left out 1 row with no time stamp" in stdout
    assert FeatureMap.load(out).skipped_rows == {"with no time stamp": 1}


def test_rows_outside_start_and_end_are_counted_and_reported(tmp_path, capsys) -> None:
    csv = tmp_path / "log.csv"
    csv.write_text("clk,ts,user,ad\n" + log_rows(72))  # three days, hourly
    job = table_job(tmp_path, csv, start="2024-01-01T12:00:00", end="2024-01-03T00:00:00")
    code, stdout, _ = run(capsys, "data", "prepare", job, "--out", tmp_path / "data")
    assert code == 0 and "36 rows" in stdout
    assert "left out 12 rows before periods.start" in stdout
    assert "left out 24 rows at or after periods.end" in stdout


# -- 4. a KB build killed midway resumes to the very same KB -----------------------------------
def test_a_kb_build_resumed_after_a_crash_is_the_uninterrupted_build(small, tmp_path) -> None:
    """The CLUB estimator's q-network has its own Adam: its state travels in the checkpoint."""
    store = PeriodStore(small)
    config = KBConfig(slots=4, dim=8, l0_warmup_steps=4, mi_estimator="club")
    train = TrainConfig(batch_size=256, lr=3e-3, epochs=4, patience=4, progress=False, seed=3)
    whole = build_knowledge_base(store, [0, 1], config, train, tmp_path / "whole")
    with killed_in_epoch(3):  # killed half-way through the build
        build_knowledge_base(store, [0, 1], config, train, tmp_path / "killed")
    resumed = build_knowledge_base(store, [0, 1], config, train, tmp_path / "killed", resume=True)
    assert [g.name for g in resumed.kb.auxiliary_groups()] == ["mi"]  # trained apart, really
    for (name, a), (_, b) in zip(
        whole.kb.state_dict().items(), resumed.kb.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


# -- 5. train and kb build write only into directories of their own ----------------------------
def test_train_and_kb_build_refuse_a_directory_they_did_not_make(
    small, trained, tmp_path, capsys
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.json").write_text('{"my": "model"}\n')
    (mine / "metrics.jsonl").write_text('{"epoch": 0}\n')
    before = hashes(mine)
    train = ["train", "--data", small, "--model", "deepfm", "--train-periods", "0:1"]
    code, _, err = run(capsys, *train, "--out", mine)
    one_error(code, err, str(mine), "not a fined output")
    code, _, err = run(capsys, "kb", "build", "--data", small, "--periods", "0", "--out", mine)
    one_error(code, err, str(mine), "not a fined output")
    assert hashes(mine) == before
    before = hashes(trained)
    code, _, err = run(capsys, "kb", "build", "--data", small, "--periods", "0", "--out", trained)
    one_error(code, err, "holds the output of `fined train`, not of `fined kb build`")
    assert hashes(trained) == before


# -- 6. one process per output directory ---------------------------------------------------------
def _start_holding(args: list, out: Path) -> subprocess.Popen:
    """A `fined` process, returned once it holds the lock of ``out``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fined.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = out / ".fined.lock"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if lock.is_file() and f'"pid": {proc.pid}' in lock.read_text():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the first process never held {out}: {proc.stderr.read()}")


def test_two_runs_on_one_directory_one_runs_the_other_fails_at_once(
    small, tmp_path, capsys
) -> None:
    config = write_config(tmp_path / "run.yaml", small, ["incremental", "kd"])
    out = tmp_path / "out"
    first = _start_holding(["run", config, "--out", out], out)
    code, _, err = run(capsys, "run", config, "--out", out)
    assert first.poll() is None  # refused while the first was still running
    one_error(code, err, str(out), "in use by another fined process", f"pid {first.pid}")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert (out / "results.csv").is_file()


def test_two_trainings_on_one_directory_one_runs_the_other_fails_at_once(
    small, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", small, "--model", "deepfm", "--train-periods", "0:2"]
    args += ["--out", out, "--set", "train.epochs=3", "--set", "train.patience=3"]
    first = _start_holding(args, out)
    code, _, err = run(capsys, *args)
    assert first.poll() is None
    one_error(code, err, "in use by another fined process", f"pid {first.pid}")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert (out / "model.json").is_file()


# -- 7. strategy labels are names, never paths -----------------------------------------------
@pytest.mark.parametrize("label", ["../../escape", "ABSOLUTE", "..", "a/b"])
def test_a_strategy_label_cannot_be_a_path(small, tmp_path, capsys, label) -> None:
    if label == "ABSOLUTE":
        label = str(tmp_path / "elsewhere")
    config = write_config(
        tmp_path / "run.yaml", small, ["incremental", {"kind": "kd", "label": label}]
    )
    before = hashes(tmp_path)
    code, _, err = run(capsys, "run", config, "--out", tmp_path / "out")
    one_error(code, err, "strategies.1.label", "not a name")
    assert hashes(tmp_path) == before  # nothing written anywhere


# -- 8. corrupt artefacts, bad values, the environment: one error line each ---------------------
def test_corrupt_weights_end_in_one_error_line(small, trained, kb_dir, tmp_path, capsys) -> None:
    scores = tmp_path / "scores.csv"
    predict = ["predict", "--data", small, "--periods", "2", "--out", scores]
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(capsys, *predict, "--run", broken)
    one_error(code, err, "model.safetensors", "not a valid weights file")

    bad_kb = tmp_path / "bad_kb"
    shutil.copytree(kb_dir, bad_kb)
    (bad_kb / "kb.safetensors").write_bytes(b"\x00" * 64)
    train = ["train", "--data", small, "--model", "deepfm", "--train-periods", "1:2"]
    code, _, err = run(capsys, *train, "--kb", bad_kb, "--out", tmp_path / "stage2")
    one_error(code, err, "kb.safetensors", "not a valid weights file")
    assert not scores.exists() and not (tmp_path / "stage2").exists()


def test_hand_edited_descriptions_end_in_one_error_line(
    small, trained, kb_dir, tmp_path, capsys
) -> None:
    scores = tmp_path / "scores.csv"
    edited = tmp_path / "edited"
    shutil.copytree(trained, edited)
    meta = json.loads((edited / "model.json").read_text())
    (edited / "model.json").write_text(json.dumps({**meta, "knowledge_tokens": "many"}))
    predict = ["predict", "--data", small, "--periods", "2", "--out", scores, "--run", edited]
    one_error(*run(capsys, *predict)[::2], "model.json", "knowledge_tokens")
    del meta["model"]
    (edited / "model.json").write_text(json.dumps(meta))
    one_error(*run(capsys, *predict)[::2], "model.json", "model: Field required")

    kb = tmp_path / "kb"
    shutil.copytree(kb_dir, kb)
    doc = json.loads((kb / "kb.json").read_text())
    (kb / "kb.json").write_text(json.dumps({**doc, "config": {**doc["config"], "heads": 3}}))
    train = ["train", "--data", small, "--model", "deepfm", "--train-periods", "1:2"]
    code, _, err = run(capsys, *train, "--kb", kb, "--out", tmp_path / "s2")
    one_error(code, err, "kb.json", "divisible")
    (kb / "kb.json").write_text(json.dumps({**doc, "periods": "all"}))
    code, _, err = run(capsys, *train, "--kb", kb, "--out", tmp_path / "s2")
    one_error(code, err, "kb.json", "periods")

    # A checkpoint whose metadata was edited: --resume names it instead of crashing.
    from fined.artifacts.checkpoint import load_checkpoint, save_checkpoint

    resumable = tmp_path / "resumable"
    shutil.copytree(trained, resumable)
    state = load_checkpoint(resumable / "last.safetensors")
    del state["trainer"]["history"]
    save_checkpoint(resumable / "last.safetensors", state)
    args = ["train", "--data", small, "--model", "deepfm", "--train-periods", "0:1"]
    args += ["--out", resumable, "--set", "embedding_dim=8", "--set", "train.epochs=1"]
    code, _, err = run(capsys, *args, "--resume")
    one_error(code, err, "last.safetensors", "not a checkpoint of this run")

    truth = tmp_path / "truth"
    shutil.copytree(small, truth)
    (truth / "ground_truth.json").write_text('{"patterns": 3}')
    code, _, err = run(capsys, "kb", "inspect", kb_dir, "--data", truth)
    one_error(code, err, "ground_truth.json", "malformed ground truth")


def test_a_corrupt_period_file_ends_in_one_error_line(small, trained, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(small, data)
    period = data / FeatureMap.load(data).periods[2].file
    raw = bytearray(period.read_bytes())
    raw[200:1200] = b"\xff" * 1000  # the pages, not the footer the loader checks first
    period.write_bytes(bytes(raw))
    code, _, err = run(capsys, "evaluate", "--run", trained, "--data", data, "--periods", "2")
    one_error(code, err, str(period), "unreadable period file")


def test_bad_command_line_values_end_in_one_error_line(small, trained, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    job = ["data", "prepare", "--dataset", "synthetic", "--out", out]
    one_error(*run(capsys, *job, "--chunk-rows", "0")[::2], "--chunk-rows", "chunk_rows")
    train = ["train", "--data", small, "--model", "deepfm", "--train-periods", "0:1"]
    one_error(*run(capsys, *train, "--out", out, "--valid", "tail:abc")[::2], "not a fraction")
    listed = tmp_path / "listed.yaml"
    listed.write_text("embedding_dim: 8\ntrain: [1, 2]\n")
    code, _, err = run(capsys, *train, "--out", out, "--config", listed)
    one_error(code, err, "listed.yaml", "train: expected a mapping")
    config = write_config(tmp_path / "run.yaml", small, ["incremental"])
    one_error(*run(capsys, "run", config, "--jobs", "0")[::2], "--jobs 0")
    code, _, err = run(capsys, *train, "--outt", out)
    one_error(code, err, "no such option: --outt", "did you mean --out", "fined train --help")
    predict = ["predict", "--run", trained, "--data", small, "--periods", "2"]
    (tmp_path / "scores.csv").mkdir()
    one_error(*run(capsys, *predict, "--out", tmp_path / "scores.csv")[::2], "is a directory")
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, *train, "--out", tmp_path / "afile" / "sub")
    one_error(code, err, "afile/sub", "a part of the path is a file")
    one_error(*run(capsys, *predict, "--out", tmp_path / "nodir" / "s.csv")[::2], "no directory")
    assert not out.exists() and not (tmp_path / "nodir").exists()


def test_uint64_ids_beyond_int64_are_kept_exactly(tmp_path, capsys) -> None:
    big = [2**64 - 1, 2**63, 2**63 + 5, 7]
    table = pa.table(
        {
            "clk": pa.array([i % 2 for i in range(40)], pa.int8()),
            "ts": pa.array([DAY0 + 3600 * i for i in range(40)], pa.int64()),
            "user": pa.array([big[i % 4] for i in range(40)], pa.uint64()),
            "ad": pa.array([i % 3 for i in range(40)], pa.uint64()),
        }
    )
    pq.write_table(table, tmp_path / "log.parquet")
    out = tmp_path / "data"
    code, stdout, err = run(
        capsys, "data", "prepare", table_job(tmp_path, tmp_path / "log.parquet"), "--out", out
    )
    assert code == 0, err
    vocab = json.loads((out / "vocab.json").read_text())
    assert sorted(vocab["user"]["ids"]) == sorted(str(v) for v in big)  # four ids, none merged


def test_data_describe_on_a_feature_map_without_periods(small, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(small, data)
    doc = json.loads((data / "feature_map.json").read_text())
    (data / "feature_map.json").write_text(json.dumps({**doc, "periods": []}))
    one_error(*run(capsys, "data", "describe", data)[::2], "feature_map.json", "no periods")


def test_permission_denied_is_said_as_such(small) -> None:
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root reads every file: run without the capabilities that allow it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux's setpriv")
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    root = Path(tempfile.mkdtemp())
    try:
        data = root / "data"
        shutil.copytree(small, data)
        os.chmod(data / "feature_map.json", 0o000)
        code, _, err = cli("data", "describe", data, prefix=prefix)
        one_error(code, err, "feature_map.json", "permission denied")
        os.chmod(data / "feature_map.json", 0o644)
        os.chmod(root, 0o555)  # no new entry may be made here
        job = ["data", "prepare", "--dataset", "synthetic", "--out", root / "new"]
        code, _, err = cli(*job, prefix=prefix)
        one_error(code, err, "permission denied")
    finally:
        os.chmod(root, 0o755)
        shutil.rmtree(root, ignore_errors=True)


def _small_files() -> None:
    limit = 64 << 10  # no file may grow past 64 KB: the disk is "full"
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_ends_in_one_error_line_and_keeps_the_old_output(tmp_path) -> None:
    out = tmp_path / "data"
    job = ["data", "prepare", "--dataset", "synthetic", "--out", out]
    assert cli(*job, "-o", "n_rows=500", "-o", "n_periods=2")[0] == 0
    before = hashes(out)
    code, _, err = cli(*job, "-o", "n_rows=40000", preexec=_small_files)
    one_error(code, err, "file too large")
    assert hashes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary left


# -- 9. integrity: fingerprints of content, files confined, weights checked ---------------------
def test_equal_sizes_are_not_the_same_data(tmp_path, capsys) -> None:
    """Two logs with the same shape but other ids: other fingerprints, and a model of one
    refuses to score the other."""
    data = {}
    for name, prefix in (("mine", "u"), ("theirs", "v")):
        csv = tmp_path / f"{name}.csv"
        csv.write_text("clk,ts,user,ad\n" + log_rows(72).replace(",u", f",{prefix}"))
        data[name] = tmp_path / f"{name}-data"
        job = table_job(tmp_path, csv, f"{name}.yaml")
        assert run(capsys, "data", "prepare", job, "--out", data[name])[0] == 0
    mine, theirs = (FeatureMap.load(d) for d in data.values())
    assert [f.vocab_size for f in mine.features] == [f.vocab_size for f in theirs.features]
    assert mine.fingerprint != theirs.fingerprint
    model = tmp_path / "model"
    args = ["train", "--data", data["mine"], "--model", "deepfm", "--train-periods", "0:1"]
    assert run(capsys, *args, "--out", model, "--set", "train.epochs=1")[0] == 0
    predict = ["predict", "--run", model, "--periods", "2", "--out", tmp_path / "s.csv"]
    one_error(*run(capsys, *predict, "--data", data["theirs"])[::2], "fingerprint")


def test_a_period_file_outside_the_dataset_is_never_read(small, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(small, data)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    doc = json.loads((data / "feature_map.json").read_text())
    doc["periods"][0]["file"] = os.path.relpath(secret, data)
    (data / "feature_map.json").write_text(json.dumps(doc))
    code, _, err = run(capsys, "data", "describe", data)
    one_error(code, err, "lies outside the dataset's directory")


def test_flipped_weight_bytes_are_refused(small, trained, tmp_path, capsys) -> None:
    flipped = tmp_path / "flipped"
    shutil.copytree(trained, flipped)
    weights = flipped / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0x01  # one bit of one tensor: still a valid file
    weights.write_bytes(bytes(raw))
    predict = ["predict", "--run", flipped, "--data", small, "--periods", "2"]
    code, _, err = run(capsys, *predict, "--out", tmp_path / "s.csv")
    one_error(code, err, "model.safetensors", "does not match the sha256")


# -- 10. data that changes under a run ------------------------------------------------------
def test_data_prepared_again_under_a_run_is_refused(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    prepare(PrepareConfig(dataset="synthetic", options=SYNTHETIC), data)
    store = PeriodStore(data)
    config = write_config(tmp_path / "run.yaml", data, ["incremental"])
    out = tmp_path / "out"
    assert run(capsys, "run", config, "--out", out)[0] == 0
    # Same sizes, other rows: prepared again while the store and the run directory exist.
    prepare(PrepareConfig(dataset="synthetic", options={**SYNTHETIC, "n_rows": 3001}), data)
    with pytest.raises(FinedError, match="changed since"):
        store.load([0])
    code, _, err = run(capsys, "run", config, "--out", out)
    one_error(code, err, "the data changed since this run started")


# -- 11. no half-written or late failures ---------------------------------------------------------
def test_a_config_error_found_late_leaves_nothing_that_blocks_the_fix(tmp_path, capsys) -> None:
    job = {"dataset": "synthetic", "options": SYNTHETIC}
    config = write_config(tmp_path / "run.yaml", tmp_path, ["incremental"], kb_periods=9)
    doc = yaml.safe_load(config.read_text())
    doc["data"] = {"prepare": job}
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    code, _, err = run(capsys, "run", config, "--out", out)
    one_error(code, err, "kb_periods=9")
    assert not (out / "config.json").exists()
    config.write_text(yaml.safe_dump({**doc, "kb_periods": 1}))
    assert run(capsys, "run", config, "--out", out)[0] == 0


def test_the_l0_ramp_is_checked_before_any_training(small, tmp_path, capsys) -> None:
    config = write_config(
        tmp_path / "run.yaml", small, ["incremental", "fined"], kb={"l0_warmup_steps": 10_000}
    )
    out = tmp_path / "out"
    code, _, err = run(capsys, "run", config, "--out", out)
    one_error(code, err, "L0 penalty ramps up over 10000 steps")
    assert "raise kb_train.epochs to" in err and "lower kb.l0_warmup_steps to" in err
    assert not (out / "warmup").exists() and not (out / "config.json").exists()


def test_weights_paired_with_stale_metadata_are_refused(small, kb_dir, tmp_path, capsys) -> None:
    """A crash between writing new weights and their description leaves new weights beside
    the old description: the digest in the description tells them apart."""
    other = tmp_path / "other"
    assert run(capsys, *kb_build(small, "0:1", other))[0] == 0
    stale = tmp_path / "stale"
    shutil.copytree(kb_dir, stale)  # kb.json says: periods 0 only
    shutil.copy(other / "kb.safetensors", stale / "kb.safetensors")  # weights of periods 0-1
    train = ["train", "--data", small, "--model", "deepfm", "--train-periods", "1:2"]
    code, _, err = run(capsys, *train, "--kb", stale, "--out", tmp_path / "s2")
    one_error(code, err, "kb.safetensors", "does not match the sha256")


def test_a_prepare_killed_inside_its_swap_is_repaired(tmp_path, capsys) -> None:
    out = tmp_path / "data"
    prepare(PrepareConfig(dataset="synthetic", options=SYNTHETIC), out)
    before = hashes(out)
    # What a kill between the swap's two renames leaves: the old copy renamed, no `out`.
    pid = dead_pid()
    os.replace(out, tmp_path / f".data.{pid}.0badc0de.old")
    (tmp_path / f".data.{pid}.0badc0de.tmp").mkdir()  # and a half-built new one
    code, stdout, _ = run(capsys, "data", "describe", out)
    assert code == 0 and hashes(out) == before  # the old copy is back
    assert run(capsys, "data", "prepare", "--dataset", "synthetic", "--out", out)[0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the dead temporary is gone


# -- 12. the smaller ones -----------------------------------------------------------------------
def test_smaller_defects(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    out = tmp_path / "data"
    one_error(*run(capsys, "data", "prepare", table_job(tmp_path, empty), "--out", out)[::2],
              "empty.csv", "the file is empty")  # fmt: skip
    csv = tmp_path / "log.csv"
    csv.write_text("clk,ts,user,ad\n" + log_rows(40))
    leak = yaml.safe_load(table_job(tmp_path, csv).read_text())
    leak["features"].append({"name": "clicked", "kind": "categorical", "column": "clk"})
    (tmp_path / "leak.yaml").write_text(yaml.safe_dump(leak))
    code, _, err = run(capsys, "data", "prepare", tmp_path / "leak.yaml", "--out", out)
    one_error(code, err, "features.clicked", "label")
    no_leftovers(out)

    # Files and directories as the user's umask allows (not always 0600 / 0700).
    code, _, err = cli("data", "prepare", table_job(tmp_path, csv), "--out", out,
                       preexec=lambda: os.umask(0o027))  # fmt: skip
    assert code == 0, err
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes["feature_map.json"] == 0o640 and modes["000.parquet"] == 0o640, modes
    assert modes["data"] == 0o750 and modes["periods"] == 0o750, modes


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path) -> None:
    """Nine levels of ten aliases under a prepare config's options (10^9 values once
    expanded) held 2 GB and hung; a value that refers to itself likewise. Each is one
    `error:` line, exit 2, nothing written; a plain alias still reads."""
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = "\n".join(["dataset: synthetic", "options:", "  n_rows: 1000", "  regimes:"]
                     + [f"    {line}" for line in levels])  # fmt: skip
    selfish = "dataset: synthetic\noptions: &o {n_rows: 1000, again: *o}\n"
    for name, text in (("bomb", bomb), ("self", selfish)):
        config = tmp_path / f"{name}.yaml"
        config.write_text(text)
        out = tmp_path / f"{name}-data"
        cmd = [sys.executable, "-m", "fined.cli", "data", "prepare", str(config), "--out",
               str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and f"error: {config}: invalid YAML" in proc.stderr
        assert not out.exists()
    plain = tmp_path / "plain.yaml"
    plain.write_text("dataset: synthetic\noptions: {n_rows: &n 1000, n_periods: 2, seed: *n}\n")
    assert main(["data", "prepare", str(plain), "--out", str(tmp_path / "plain-data")]) == 0


def test_training_that_diverges_stops_naming_the_epoch_and_step(small, tmp_path, capsys) -> None:
    """An infinite learning rate: the loss goes non-finite on the second step (with one step
    an epoch, the weights after it). It was a traceback from the AUC ("Input contains NaN");
    now one line naming where, exit 2, and the model is not written."""
    out = tmp_path / "run"
    args = ["train", "--data", small, "--model", "deepfm", "--train-periods", "0:1", "--out",
            out, "--set", "embedding_dim=8", "--set", "train.lr=.inf", "--set",
            "train.batch_size=256"]  # fmt: skip
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "training diverged: the loss was not finite at step 2 of epoch 0" in err
    assert not (out / "model.safetensors").exists()


def test_one_class_validation_rows_are_refused_before_training(small) -> None:
    """All-0 validation labels: the AUC that picks epochs is undefined. It ended in a model
    written with best epoch -1 and a KeyError; now a FinedError before any step."""
    from fined.models import build_model

    store = PeriodStore(small)
    valid = store.load([1], "holdout")
    valid.label = torch.zeros_like(valid.label)
    trainer = Trainer(build_model("deepfm", store.feature_map, {"embedding_dim": 8}),
                      TrainConfig(epochs=1, progress=False))  # fmt: skip
    with pytest.raises(FinedError, match="validation rows are all 0: the AUC that selects"):
        trainer.fit(store.load([0], "train"), valid)
    logloss = TrainConfig(epochs=1, progress=False, monitor="logloss")
    Trainer(build_model("deepfm", store.feature_map, {"embedding_dim": 8}), logloss).fit(
        store.load([0], "train"), valid
    )


def test_help_text_has_no_raw_markup() -> None:
    """What --help prints of every command and option reads as text: a docstring's RST
    (``--kb``) was shown as is."""
    import typer

    from fined.cli import app

    def texts(command, name: str):
        yield name, command.help or ""
        for param in command.params:
            yield f"{name} {param.name}", getattr(param, "help", None) or ""
        for sub, child in getattr(command, "commands", {}).items():
            yield from texts(child, f"{name} {sub}")

    found = list(texts(typer.main.get_command(app), "fined"))
    assert len(found) > 50  # every command and option was seen
    raw = [where for where, text in found if "``" in text]
    assert not raw, raw
