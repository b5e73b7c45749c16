"""Two CPU processes (gloo) under torchrun, through `fined train --nproc 2`: disjoint shares,
the same result as one process, a rank-0 checkpoint that one process can use, and a killed
rank that fails the job clearly and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fined.cli import main
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.knowledge.knowledge_base import KBConfig

SETTINGS = [
    "--set", "embedding_dim=8", "--set", "mlp=[32]", "--set", "train.batch_size=512",
    "--set", "train.lr=0.003", "--seed", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "data"
    options = {"n_rows": 40_000, "n_periods": 4, "seed": 5}
    # Small row groups, so that each rank reads only some of them.
    prepare(PrepareConfig(dataset="synthetic", options=options, row_group_rows=2_000), out)
    return out


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "deepfm", "--train-periods", "0:2",
            "--test", "3", "--out", str(out), *SETTINGS, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def two_and_one(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    epochs = ["--set", "train.epochs=12"]  # to convergence (best epochs 8 and 9)
    assert main(train_args(data_dir, root / "ddp", "--nproc", "2", *epochs)) == 0
    assert main(train_args(data_dir, root / "one", *epochs)) == 0
    return root / "ddp", root / "one"


def test_each_rank_reads_a_disjoint_half(two_and_one, data_dir) -> None:
    ddp, _ = two_and_one
    ranks = [json.loads((ddp / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    fmap = PeriodStore(data_dir).feature_map
    for r0, r1 in zip(ranks[0]["reads"], ranks[1]["reads"], strict=True):
        assert (r0["period"], r0["part"]) == (r1["period"], r1["part"])
        period = fmap.periods[r0["period"]]
        total = {"train": period.rows - period.holdout_rows, "holdout": period.holdout_rows,
                 "all": period.rows}[r0["part"]]  # fmt: skip
        assert r0["rows"] + r1["rows"] == total  # together: every row
        assert abs(r0["rows"] - r1["rows"]) <= 1  # halves
        assert r0["last"] < r1["first"]  # contiguous shares that do not overlap
    assert {r["pid"] for r in ranks} and ranks[0]["pid"] != ranks[1]["pid"]


def test_two_ranks_match_one_process(two_and_one) -> None:
    ddp, one = (json.loads((d / "results.json").read_text()) for d in two_and_one)
    a, b = ddp["metrics"]["valid"]["auc"], one["metrics"]["valid"]["auc"]
    # Same seed and global batch (2 x 256 vs 512), but the rows of each step differ: each
    # rank shuffles its own half. Measured: 0.7905 (2 ranks) vs 0.7975 (1 process); across
    # seeds 1-3 one process gives 0.786-0.798 and two ranks 0.771-0.791: the gap is within
    # the seed-to-seed spread of this small, quickly overfitting set.
    assert abs(a - b) < 0.015, (a, b)
    assert a > 0.75  # and both learned the planted patterns
    assert ddp["metrics"]["valid"]["rows"] == one["metrics"]["valid"]["rows"]  # all rows scored


def test_rank_zero_checkpoint_loads_and_predicts_in_one_process(two_and_one, data_dir) -> None:
    ddp, _ = two_and_one
    scores = ddp / "scores.csv"
    assert main(["predict", "--run", str(ddp), "--data", str(data_dir), "--periods", "3",
                 "--out", str(scores)]) == 0  # fmt: skip
    lines = scores.read_text().splitlines()
    assert len(lines) - 1 == PeriodStore(data_dir).feature_map.periods[3].rows


def test_a_killed_rank_fails_clearly_and_the_job_resumes(data_dir, tmp_path) -> None:
    out = tmp_path / "killed"
    args = train_args(data_dir, out, "--nproc", "2", "--set", "train.epochs=8",
                      "--set", "train.patience=8", "--set", "train.batch_size=128")  # fmt: skip
    cmd = [sys.executable, "-m", "fined.cli", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    rank1 = out / "ranks" / "rank1.json"
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and rank1.is_file():
            break  # an epoch is checkpointed: kill rank 1 in the middle of the next ones
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    os.kill(json.loads(rank1.read_text())["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "worker rank 1 of 2 failed (killed by signal 9)" in err and "--resume" in err
    assert "Traceback" not in err
    assert not (out / "model.json").exists()
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(8))
    assert (out / "model.json").is_file()


def test_kb_build_runs_under_two_ranks(data_dir, tmp_path) -> None:
    """The KB's CLUB estimator trains outside DDP with averaged gradients; the KB written by
    rank 0 loads in one process and its epoch was selected after the L0 ramp."""
    from fined.artifacts.kb_store import load_kb

    out = tmp_path / "kb"
    args = ["kb", "build", "--data", str(data_dir), "--periods", "0:1", "--out", str(out),
            "--nproc", "2", "--set", "train.epochs=12", "--set", "train.seed=1"]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((out / "kb.json").read_text())
    assert meta["metrics"]["best_epoch"] >= 8  # the ramp: 150 steps of 18 = 9 epochs
    assert meta["metrics"]["valid"]["auc"] > 0.6  # measured 0.653 at 8 slots (one process: 0.646)
    kb, _ = load_kb(out, PeriodStore(data_dir).feature_map)
    assert kb.config.slots == KBConfig().slots
