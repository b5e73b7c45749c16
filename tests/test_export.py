"""`fined export`: the six models and a FINED model as pt2 (torch.export + AOTInductor, the
default), ONNX and TorchScript (the old format) artefacts that, loaded the way their sidecar
says, without fined's model classes, score a batch as `fined predict` does (1e-5) and a batch
of zero rows as zero scores."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from fined.cli import main
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig

MODELS = ["deepfm", "dcn", "pnn", "xdeepfm", "autoint", "din"]
FORMATS = ["pt2", "onnx", "torchscript"]
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


@dataclass(frozen=True)
class Trained:
    model: str
    run: Path
    expected: np.ndarray  # `fined predict`'s scores of period 3


@pytest.fixture(scope="module", params=[*MODELS, "fined"])
def trained(request, data, kb, tmp_path_factory) -> Trained:
    """Each model trained once (one epoch), with `fined predict`'s scores of period 3."""
    model = request.param
    tmp = tmp_path_factory.mktemp(model)
    run = tmp / "run"
    args = ["train", "--data", data, "--model", "din" if model == "fined" else model]
    args += ["--train-periods", "1:2", "--out", run, *QUICK]
    if model == "fined":
        args += ["--kb", kb]
    assert main([str(a) for a in args]) == 0
    scores = tmp / "scores.csv"
    assert main([str(a) for a in ["predict", "--run", run, "--data", data, "--periods", "3",
                                  "--out", scores]]) == 0  # fmt: skip
    return Trained(model, run, pl.read_csv(scores)["score"].to_numpy())


def _inputs(data: Path, sidecar: dict, fmt: str) -> dict:
    """Period 3 as stored (no OOV mapping: the artefact maps later ids itself), as the
    sidecar asks: numpy arrays for ONNX, torch tensors for the others."""
    rows = PeriodStore(data).load([3])
    tensors = {"ids": rows.ids, "floats": rows.floats, **rows.sequences}
    return {
        spec["name"]: tensors[spec["name"]].numpy() if fmt == "onnx" else tensors[spec["name"]]
        for spec in sidecar["inputs"]
    }


def _score(sidecar: dict, directory: Path, inputs: dict, monkeypatch) -> np.ndarray:
    """Runs the sidecar's Python lines in the artefact's directory, as a serving side would."""
    monkeypatch.chdir(directory)
    scope = {"inputs": inputs}
    with torch.no_grad(), warnings.catch_warnings():
        # The old format's loader is deprecated by PyTorch: that is why pt2 is the default.
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        exec(sidecar["load"]["python"], scope)
    got = scope["probability"]
    return got if isinstance(got, np.ndarray) else got.numpy()


def _export(trained: Trained, fmt: str, artefact: Path) -> None:
    """`fined export`. DeepFM's pt2 without --format (pt2 is the default), in a fresh
    process: it must print the one line that says what was written and nothing on stderr
    (PyTorch's notes come once a process; rich wraps the line at 80 columns)."""
    args = ["export", "--run", trained.run, "--out", artefact]
    if (trained.model, fmt) != ("deepfm", "pt2"):
        assert main([str(a) for a in [*args, "--format", fmt]]) == 0
        return
    done = subprocess.run(
        [sys.executable, "-m", "fined.cli", *map(str, args)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("wrote ") and "warn" not in done.stdout.lower()


def _without_fined(directory: Path, sidecar: Path, inputs: dict) -> np.ndarray:
    """The sidecar's Python lines run in a process where fined cannot be imported."""
    np.savez(directory / "rows.npz", **{k: v.numpy() for k, v in inputs.items()})
    script = (
        "import sys\nsys.modules['fined'] = None  # any import of fined fails\n"
        "import json, numpy, torch\n"
        "arrays = numpy.load('rows.npz')\n"
        "inputs = {k: torch.from_numpy(arrays[k]) for k in arrays.files}\n"
        f"exec(json.load(open({sidecar.name!r}))['load']['python'])\n"
        "numpy.save('scores.npy', probability.numpy())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=directory, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return np.load(directory / "scores.npy")


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_exported_model_scores_as_predict_does(
    data, trained, fmt, tmp_path, monkeypatch
) -> None:
    artefact = tmp_path / f"model.{fmt}"
    _export(trained, fmt, artefact)
    sidecar = json.loads(Path(f"{artefact}.json").read_text())
    assert sidecar["format"] == fmt
    assert sidecar["fingerprint"] == PeriodStore(data).feature_map.fingerprint
    assert sidecar["fined_model"] == (trained.model == "fined")
    assert ("note" in sidecar) == (fmt == "torchscript")  # the old format says so
    inputs = _inputs(data, sidecar, fmt)
    got = _score(sidecar, tmp_path, inputs, monkeypatch)
    assert got.shape == trained.expected.shape
    np.testing.assert_allclose(got, trained.expected, atol=1e-5, rtol=0)
    none = _score(sidecar, tmp_path, {k: v[:0] for k, v in inputs.items()}, monkeypatch)
    assert none.shape == (0,)
    if (trained.model, fmt) == ("deepfm", "pt2"):
        five = _without_fined(
            tmp_path, Path(f"{artefact}.json"), {k: v[:5] for k, v in inputs.items()}
        )
        np.testing.assert_allclose(five, trained.expected[:5], atol=1e-5, rtol=0)
