"""Dataset adapters, registered by name. ``open_source(config)`` builds the one a job names."""

from __future__ import annotations

from collections.abc import Callable

from fined.data.datasets.source import RawSource
from fined.data.schema import PrepareConfig
from fined.registry import Registry

Builder = Callable[[PrepareConfig], RawSource]
DATASETS: Registry[Builder] = Registry(
    "dataset",
    "fined.data.datasets",
    ("movielens", "synthetic", "table", "presets", "taobao", "mind"),
)
register = DATASETS.register


def dataset_names() -> list[str]:
    return DATASETS.names()


def open_source(config: PrepareConfig) -> RawSource:
    """Build the adapter named by ``config.dataset`` (unknown names are a FinedError)."""
    return DATASETS.get(config.dataset)(config)


__all__ = ["RawSource", "dataset_names", "open_source", "register"]
