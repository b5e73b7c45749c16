"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Real-format sample rows in ``../shared/data/fixtures`` beside the repository."""
    path = Path(os.environ.get("FINED_FIXTURES", REPO.parent / "shared" / "data" / "fixtures"))
    if not path.is_dir():
        pytest.skip(f"real-format fixtures not found at {path} (set FINED_FIXTURES)")
    return path
