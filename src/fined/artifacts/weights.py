"""Module weights as safetensors files: written atomically, read without pickle, checked.

Every weights file has its sha256 recorded in the JSON that describes it (``model.json``,
``kb.json``, a cell's ``record.json``), written after the weights; every load verifies it. So
a file corrupted on disk, swapped for another or left paired with stale metadata by a crash
between the two writes is refused by name instead of being used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import nn

from fined.errors import FinedError
from fined.io import atomic_write_bytes, read_bytes


def save_weights(path: str | Path, module: nn.Module) -> str:
    """Write ``module``'s state (atomically); returns the file's sha256 to record."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    blob = save(state)
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


def read_weights(path: str | Path, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file whose recorded digest is ``sha256``."""
    raw, state = read_safetensors(path, "weights file")
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise FinedError(
            f"{path}: does not match the sha256 recorded for it (corrupted, or replaced after "
            "it was written); retrain or rebuild it"
        )
    return state


def load_weights(path: str | Path, module: nn.Module, sha256: str) -> None:
    """Load a checked weights file into ``module``; a mismatch is a FinedError."""
    state = read_weights(path, sha256)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise FinedError(f"{path}: weights do not fit the model ({err})") from None
