"""Dataset adapters, registered by name. ``open_source(config)`` builds the one a job names."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from fined.data.datasets.base import RawSource
from fined.data.schema import PrepareConfig
from fined.errors import FinedError

Builder = Callable[[PrepareConfig], RawSource]
_REGISTRY: dict[str, Builder] = {}

# Modules that register adapters when imported; listed here so that the registry is complete
# without importing every adapter's dependencies up front.
_MODULES = ("movielens", "synthetic", "table", "presets", "taobao")


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        return builder

    return wrap


def _load_all() -> None:
    for mod in _MODULES:
        try:
            import_module(f"fined.data.datasets.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"fined.data.datasets.{mod}":
                raise


def dataset_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def open_source(config: PrepareConfig) -> RawSource:
    """Build the adapter named by ``config.dataset`` (unknown names are a FinedError)."""
    _load_all()
    builder = _REGISTRY.get(config.dataset)
    if builder is None:
        raise FinedError(
            f"unknown dataset {config.dataset!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    return builder(config)


__all__ = ["RawSource", "dataset_names", "open_source", "register"]
