"""Shared test fixtures."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import fined.io
from fined.data.feature_map import FeatureMap
from fined.data.loader import footer_digest
from fined.outputs import MARKER
from fined.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Real-format sample rows in ``../shared/data/fixtures`` beside the repository."""
    path = Path(os.environ.get("FINED_FIXTURES", REPO.parent / "shared" / "data" / "fixtures"))
    if not path.is_dir():
        pytest.skip(f"real-format fixtures not found at {path} (set FINED_FIXTURES)")
    return path


def write_run_config(path: Path, data: Path, strategies: list, **extra) -> Path:
    """A small `fined run` config on a prepared directory: DeepFM (emb 8, MLP [32]), one seed,
    a few epochs, a 4-slot KB of the first period; ``extra`` replaces whole sections."""
    doc = {
        "name": "tiny",
        "data": {"prepared": str(data)},
        "kb_periods": 1,
        "models": ["deepfm"],
        "model_settings": {"deepfm": {"embedding_dim": 8, "mlp": [32]}},
        "seeds": [1],
        "strategies": strategies,
        "train": {"batch_size": 512, "lr": 0.003, "epochs": 3, "patience": 1},
        "kb": {"slots": 4, "dim": 8, "l0_warmup_steps": 10},
        "kb_train": {"batch_size": 512, "epochs": 2, "patience": 1},
        **extra,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.contextmanager
def killed_in_epoch(n: int, raises: bool = True) -> Iterator[None]:
    """Training inside the block stops at the start of its n-th epoch (from 1) as a kill
    would: with the checkpoints of the epochs before it on disk, and nothing after.
    ``raises``: the block must end in the interrupt (the command line turns it into exit
    code 130 instead)."""
    original = Trainer._train_epoch
    calls = {"n": 0}

    def dies(self, *args):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, *args)

    Trainer._train_epoch = dies
    try:
        with pytest.raises(KeyboardInterrupt) if raises else contextlib.nullcontext():
            yield
    finally:
        Trainer._train_epoch = original


class Killed(BaseException):
    """A kill, in process: no handler of the library catches it (only ``finally`` blocks
    and context managers run on the way out, where a SIGKILL would run nothing: they release
    locks, and remove a directory a start claimed but wrote nothing into)."""


@contextlib.contextmanager
def artefact_writes(root: Path, stop: bool = False) -> Iterator[list[str]]:
    """Every file under ``root`` whose bytes an atomic write (``fined.io``, which every
    artefact goes through) changes, listed in order as a path relative to ``root``; the
    claim marker aside (written at each start). ``stop``: raise ``Killed`` right after each
    such write, with the file in place: a run started again and again goes one artefact
    further each time."""
    written: list[str] = []
    real = fined.io.os

    class _Os:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def replace(self, src, dst) -> None:
            dst = Path(dst)
            before = dst.read_bytes() if dst.is_file() else None
            real.replace(src, dst)
            if dst.is_relative_to(root) and dst.name != MARKER and dst.read_bytes() != before:
                written.append(dst.relative_to(root).as_posix())
                if stop:
                    raise Killed(written[-1])

    fined.io.os = _Os()
    try:
        yield written
    finally:
        fined.io.os = real


def pytest_collection_modifyitems(config, items) -> None:
    """``@pytest.mark.cuda`` tests run only where PyTorch sees a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def flip_labels(src: Path, dst: Path, period: int) -> Path:
    """A copy of the prepared dataset ``src`` at ``dst`` with every label of ``period``
    flipped: what a test period that drives no choice must not change."""
    shutil.copytree(src, dst)
    fmap = FeatureMap.load(dst)
    path = dst / fmap.periods[period].file
    table = pq.read_table(path)
    label = table.column("label")
    flipped = pc.subtract(pa.scalar(1, label.type), label)
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", flipped), path)
    # The loader refuses period files that differ from what feature_map.json vouches for:
    # vouch for the edited one (as a prepare of these rows would).
    with open(path, "rb") as fh:
        fmap.periods[period].footer_sha256 = footer_digest(fh)
    fmap.data_fingerprint = fmap.compute_data_fingerprint()
    fmap.save(dst)
    return dst
