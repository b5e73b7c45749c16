"""Name -> implementation registries whose entries register themselves on import.

The modules that hold entries are listed up front and imported on first use, so a registry
is complete without importing every implementation (and its dependencies) at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Generic, TypeVar

from fined.errors import FinedError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, modules: tuple[str, ...]) -> None:
        self.kind, self.package, self.modules = kind, package, modules
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return wrap

    def _load(self) -> None:
        if self._loaded:
            return
        for mod in self.modules:
            import_module(f"{self.package}.{mod}")
        self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def unregister(self, name: str) -> None:
        """Forget an entry (one registered for a while, e.g. by a test)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry called ``name`` (case-insensitive); unknown names are a FinedError."""
        self._load()
        entry = self._entries.get(name.lower())
        if entry is None:
            raise FinedError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return entry
