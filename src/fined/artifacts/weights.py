"""Module weights as safetensors files: written atomically, read without pickle, checked.

Every weights file has its sha256 recorded in the JSON that describes it (``model.json``,
``kb.json``, a cell's ``record.json``), written after the weights; every load verifies it. So
a file corrupted on disk, swapped for another or left paired with stale metadata by a crash
between the two writes is refused by name instead of being used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import nn

from fined.errors import FinedError
from fined.io import atomic_write_bytes, read_bytes


def save_weights(
    path: str | Path, module: nn.Module, metadata: dict[str, str] | None = None
) -> str:
    """Write ``module``'s state (atomically), with ``metadata`` in the header; returns the
    file's sha256 to record."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    blob = save(state, metadata=metadata)
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def read_safetensors(path: str | Path, what: str) -> tuple[bytes, dict[str, torch.Tensor]]:
    """The raw bytes and the tensors of a safetensors file; anything else is a FinedError."""
    raw = read_bytes(path, what)
    try:
        return raw, load(raw)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise FinedError(f"{path}: not a valid {what} (safetensors: {err})") from None


def safetensors_metadata(path: str | Path, raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    try:
        length = int.from_bytes(raw[:8], "little")
        return json.loads(raw[8 : 8 + length]).get("__metadata__") or {}
    except (ValueError, AttributeError) as err:
        raise FinedError(f"{path}: not a valid safetensors file ({err})") from None


def stored_shapes(path: str | Path) -> dict[str, list[int]]:
    """The shape of each tensor in a weights file, from its header alone (nothing else is
    read: a description can be checked against the weights before any memory is taken)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise FinedError(f"{path}: no such file (weights file)") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise FinedError(f"{path}: not a valid weights file (safetensors: {err})") from None


def check_shapes(
    build: Callable[[], nn.Module], weights: Path, sizes: list[tuple[str, int]]
) -> None:
    """The module a description makes (``build``, run on the meta device: no memory taken)
    has the shapes ``weights`` holds, so that an edited size (``embedding_dim: 10**12``) is
    refused by name instead of being allocated. ``sizes``: the description's whole-number
    settings as (key, value); the first whose value a differing shape has is named."""
    try:
        with torch.device("meta"):
            described = build().state_dict()
    except RuntimeError as err:  # a size whose tensor's byte count overflows
        if "overflow" not in str(err):
            raise
        key, value = max(sizes, key=lambda kv: kv[1], default=("a size", 0))
        raise FinedError(
            f"{key} = {value} makes a tensor larger than any memory (edited? the description "
            "and the weights must be written together)"
        ) from None
    stored = stored_shapes(weights)
    for name, tensor in described.items():
        shape = list(tensor.shape)
        if name not in stored or stored[name] == shape:
            continue  # a missing tensor is said when the weights are loaded
        differ = set(shape) - set(stored[name])  # the sizes the weights do not have
        fields = [f"{key} = {value}" for key, value in sizes if value in differ]
        culprit = f"{fields[0]} makes" if fields else "it makes"
        raise FinedError(
            f"{culprit} {name} {shape}, but {weights.name} holds {stored[name]} "
            "(edited? the description and the weights must be written together)"
        )


def size_fields(sections: dict[str, Any]) -> list[tuple[str, int]]:
    """The whole-number settings of a description's ``sections`` (a section: a mapping of
    settings, or one value), as (key, value): what may size a tensor."""
    found: list[tuple[str, Any]] = []
    for section, doc in sections.items():
        if not isinstance(doc, dict):
            found.append((section, doc))
            continue
        for key, value in doc.items():
            for v in value if isinstance(value, list) else [value]:
                found.append((f"{section}.{key}", v))
    return [(k, v) for k, v in found if isinstance(v, int) and not isinstance(v, bool)]


def read_weights(path: str | Path, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file whose recorded digest is ``sha256``."""
    raw, state = read_safetensors(path, "weights file")
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise FinedError(
            f"{path}: does not match the sha256 recorded for it (corrupted, or replaced after "
            "it was written); retrain or rebuild it"
        )
    return state


def fit_weights(path: str | Path, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (read from ``path``) into ``module``; a mismatch is a FinedError."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise FinedError(f"{path}: weights do not fit the model ({err})") from None
