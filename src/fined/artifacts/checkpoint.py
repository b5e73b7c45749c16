"""Checkpoints as single safetensors files: tensors in the body, everything else (trainer
state, optimizer hyper-parameters, configs) as JSON in the header's metadata.

No pickle anywhere: a checkpoint handed to us by someone else cannot execute code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from fined.artifacts.weights import read_safetensors, safetensors_metadata
from fined.errors import FinedError
from fined.io import atomic_write_bytes

_TENSOR = "__tensor__"
_INT_KEYS = "__int_keys__"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a reference, collecting the tensors."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        int_keys = bool(obj) and all(isinstance(k, int) for k in obj)
        body = {str(k): _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {_INT_KEYS: body} if int_keys else body
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_INT_KEYS}:
            return {int(k): _unflatten(v, tensors) for k, v in obj[_INT_KEYS].items()}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a nested state (tensors, numbers, strings, lists, dicts) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    blob = save(tensors, metadata={"fined": json.dumps(skeleton)})
    atomic_write_bytes(path, blob)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (safetensors only, never pickle)."""
    raw, tensors = read_safetensors(path, "checkpoint")
    meta = safetensors_metadata(path, raw)
    if "fined" not in meta:
        raise FinedError(f"{path}: not a fined checkpoint (no metadata)")
    try:
        return _unflatten(json.loads(meta["fined"]), tensors)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise FinedError(f"{path}: malformed checkpoint metadata ({err})") from None
