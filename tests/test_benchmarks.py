"""Every benchmark script still runs, on tiny inputs (its figures are not checked here:
speed is measured by running the scripts in full, see benchmarks/README.md). Scripts that
are never run rot silently: throughput.py once failed for every model after a trainer
refactor, and nothing noticed."""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

RUNS = {
    "prepare_throughput": (["--rows", "50000"], "batching"),
    "taobao_tables": (["raw", "--scale", "0.0002"], "'behavior_log': 144654"),
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
            "--precisions",
            "fp32",  # bf16 on a CPU without bf16 units is 7x slower; the next test runs it
            "--models",
            "deepfm,fined,din",
            "--no-peer",
        ],
        "a FINED-DeepFM step costs",
    ),
    "attribution": (
        ["--logs", "synthetic_drift", "--protocols", "paper", "--seeds", "1", "--rows", "8000"],
        "synthetic_drift_paper",
    ),
    "seasonal": (
        ["--logs", "seasons", "--models", "deepfm", "--seeds", "1", "--scale", "0.05"],
        "fined - replay",
    ),
    "job_safety": (["--seeds", "1", "--rows", "12000"], "cells meet the bar"),
    "robustness": (["--seeds", "1", "--only", "kb_random", "--out", "rb"], "kb_random"),
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


def test_the_taobao_memory_benchmark_runs_on_tiny_tables(tmp_path) -> None:
    """Two sizes prepared through taobao_ad_raw, every impression counted, the growth said."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "prepare_throughput.py"), "--taobao", "0.0001,0.0002"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "72,327 -> 144,654 rows: peak RSS grows" in done.stdout, done.stdout


def test_a_failing_benchmark_fails(tmp_path) -> None:
    """A model that cannot be measured ends the script non-zero (once it printed "failed"
    and exited 0, and this test's only check was that the model's name was printed)."""
    args = ["--rows", "20000", "--models", "deepfm,no_such_model", "--max-steps", "1"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "throughput.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode != 0
    assert "no_such_model failed" in done.stdout and "error: no_such_model" in done.stderr


def _module(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_setting_the_gpu_benchmark_plans_runs(tmp_path) -> None:
    """Each setting ``gpu.py`` plans for a GPU (the streamed feed included, which its CPU run
    never reaches) measured through the same code on the CPU, on a few rows."""
    from fined.data.loader import PeriodStore

    gpu = _module("gpu")
    gpu.prepare_data(3000, tmp_path / "criteo")
    gpu.prepare_history_data(3000, tmp_path / "history")
    stores = {name: PeriodStore(tmp_path / name) for name in ("criteo", "history")}
    planned = argparse.Namespace(
        device=torch.device("cuda"), batches=[8192, 65536], precisions=["fp32", "bf16"],
        models=gpu.MODELS, peer=False, graphs=["on", "off"],
    )  # fmt: skip
    settings = gpu.plan(planned)
    assert {setting[3] for setting in settings} == {"resident", "streamed"}
    assert {setting[4] for setting in settings} == {"on", "off"}  # CUDA graphs on and off
    assert {setting[0] for setting in settings} == set(gpu.MODELS)
    here = argparse.Namespace(device=torch.device("cpu"), warmup=1)
    measured = set()
    for setting in settings:
        # Both planned batches exceed the 3,000 rows: on the CPU each is the same one step,
        # so each (model, precision, rows, graphs) is measured once.
        if (key := (setting[0], *setting[2:])) in measured:
            continue
        measured.add(key)
        store = stores["history" if setting[0] == "din" else "criteo"]
        r = gpu.measure(setting[0], store, setting, here)
        assert r["train_sps"] > 0 and 0 < r["auc"] < 1, setting
