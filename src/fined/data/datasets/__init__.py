"""Dataset adapters, registered by name. ``open_source(config)`` builds the one a job names."""

from __future__ import annotations

from collections.abc import Callable

from fined.config import StrictModel
from fined.data.datasets.source import RawSource
from fined.data.schema import PrepareConfig
from fined.registry import Registry

Builder = Callable[[PrepareConfig], RawSource]
DATASETS: Registry[Builder] = Registry(
    "dataset",
    "fined.data.datasets",
    ("movielens", "synthetic", "table", "presets", "taobao", "mind"),
)
OPTIONS: dict[str, type[StrictModel]] = {}  # each adapter's `options`, for `fined data datasets`


def register(name: str, options: type[StrictModel] | None = None) -> Callable[[Builder], Builder]:
    """Register an adapter's builder under ``name``, with the model of its ``options``."""
    if options is not None:
        OPTIONS[name] = options
    return DATASETS.register(name)


def dataset_names() -> list[str]:
    return DATASETS.names()


def dataset_options(name: str) -> type[StrictModel] | None:
    """The options model of an adapter (None: it takes none)."""
    DATASETS.get(name)  # loads the adapters; an unknown name is an error
    return OPTIONS.get(name.lower())


def dataset_summary(name: str) -> str:
    """The first line of an adapter's builder docstring."""
    doc = (DATASETS.get(name).__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def open_source(config: PrepareConfig) -> RawSource:
    """Build the adapter named by ``config.dataset`` (unknown names are a FinedError)."""
    return DATASETS.get(config.dataset)(config)


__all__ = [
    "RawSource", "dataset_names", "dataset_options", "dataset_summary", "open_source", "register",
]  # fmt: skip
