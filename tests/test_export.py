"""`fined export`: the six models and a FINED model as TorchScript and ONNX artefacts that,
loaded without fined's model classes, score a batch as `fined predict` does (1e-5); and raw
rows encoded with the saved vocabularies as the prepared data holds them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from fined.cli import main
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.raw_rows import RawRowEncoder
from fined.data.schema import PrepareConfig

MODELS = ["deepfm", "dcn", "pnn", "xdeepfm", "autoint", "din"]
QUICK = ["--set", "train.epochs=1", "--set", "mlp=[32]", "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml") / "data"
    prepare(PrepareConfig(dataset="movielens100k"), out)
    return out


@pytest.fixture(scope="module")
def kb(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kb") / "kb"
    args = ["kb", "build", "--data", data, "--periods", "0:1", "--out", out]
    sets = ["slots=4", "dim=8", "l0_warmup_steps=5", "train.epochs=2", "train.progress=false"]
    assert main([str(a) for a in args + [x for s in sets for x in ("--set", s)]]) == 0
    return out


def _inputs(data: Path, sidecar: dict) -> dict[str, np.ndarray]:
    """Period 3 as stored (no OOV mapping: the artefact maps later ids itself)."""
    rows = PeriodStore(data).load([3])
    tensors = {"ids": rows.ids, "floats": rows.floats, **rows.sequences}
    return {spec["name"]: tensors[spec["name"]].numpy() for spec in sidecar["inputs"]}


@pytest.mark.parametrize("model", [*MODELS, "fined"])
def test_an_exported_model_scores_as_predict_does(data, kb, tmp_path, model) -> None:
    import onnxruntime

    run = tmp_path / "run"
    args = ["train", "--data", data, "--model", "din" if model == "fined" else model]
    args += ["--train-periods", "1:2", "--out", run, *QUICK]
    if model == "fined":
        args += ["--kb", kb]
    assert main([str(a) for a in args]) == 0
    scores = tmp_path / "scores.csv"
    assert main([str(a) for a in ["predict", "--run", run, "--data", data, "--periods", "3",
                                  "--out", scores]]) == 0  # fmt: skip
    expected = pl.read_csv(scores)["score"].to_numpy()
    for fmt in ("torchscript", "onnx"):
        artefact = tmp_path / f"model.{fmt}"
        assert (
            main([str(a) for a in ["export", "--run", run, "--out", artefact, "--format", fmt]])
            == 0
        )
        sidecar = json.loads(Path(f"{artefact}.json").read_text())
        assert sidecar["fingerprint"] == PeriodStore(data).feature_map.fingerprint
        assert sidecar["fined_model"] == (model == "fined")
        inputs = _inputs(data, sidecar)
        if fmt == "torchscript":
            scorer = torch.jit.load(str(artefact))
            with torch.no_grad():
                got = scorer(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        else:
            session = onnxruntime.InferenceSession(str(artefact))
            got = session.run(None, inputs)[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_an_onnx_export_prints_one_line(data, tmp_path) -> None:
    """In a fresh process (the exporter's notes come once a process): the line that says
    what was written, nothing on stderr (PyTorch's exporter logged four warnings about
    torchvision operators no CTR model uses)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    args = ["train", "--data", data, "--model", "deepfm", "--train-periods", "1:2", "--out", run]
    assert main([str(a) for a in [*args, *QUICK]]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "fined.cli", "export", "--run", str(run), "--format", "onnx",
         "--out", str(tmp_path / "model.onnx")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("wrote ")


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
