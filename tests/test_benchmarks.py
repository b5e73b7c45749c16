"""Every benchmark script still runs, on tiny inputs (its figures are not checked here:
speed is measured by running the scripts in full, see benchmarks/README.md). Scripts that
are never run rot silently: throughput.py once failed for every model after a trainer
refactor, and nothing noticed."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

RUNS = {
    "prepare_throughput": (["--rows", "50000"], "batching"),
    "throughput": (["--rows", "20000", "--models", "deepfm", "--max-steps", "2"], "deepfm"),
    "movielens_accuracy": (["--seeds", "1", "--models", "deepfm", "--sets", "reduced"], "deepfm"),
    "knowledge": (["--rows", "30000", "--models", "deepfm"], "| deepfm |"),
    "gpu": (
        [
            "--device",
            "cpu",
            "--rows",
            "20000",
            "--batches",
            "4096",
            "--models",
            "deepfm,fined,din",
            "--no-peer",
        ],
        "a FINED-DeepFM step costs",
    ),
    "scaling": (
        ["--rows", "20000", "--big", "20000,10000", "--epochs", "1", "--cap", "5000"],
        "2 processes (DDP), sparse",
    ),
}


def test_every_script_is_covered() -> None:
    assert {p.stem for p in BENCHMARKS.glob("*.py")} == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_runs_on_tiny_inputs(name: str, tmp_path) -> None:
    args, expected = RUNS[name]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout, done.stdout[-2000:]
