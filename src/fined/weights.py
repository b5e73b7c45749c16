"""Module weights as safetensors files: written atomically, read without pickle."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save
from torch import nn

from fined.errors import FinedError
from fined.io import atomic_write_bytes


def save_weights(path: str | Path, module: nn.Module) -> None:
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(state))


def load_weights(path: str | Path, module: nn.Module) -> None:
    """Load ``path`` into ``module``; a missing file or a mismatch is a FinedError."""
    path = Path(path)
    if not path.is_file():
        raise FinedError(f"{path}: missing weights")
    try:
        module.load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError) as err:
        raise FinedError(f"{path}: weights do not fit the model ({err})") from None
