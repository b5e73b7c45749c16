"""A description (``model.json``, ``kb.json``) vouched for by the weights written with it.

The description's digest (``weights_sha256``) vouches for the weights; this is the other
direction. The weights file's header carries a short digest of each key of the description,
so a key edited, added or removed after the two were written together is refused by name
before anything is built from it: ``train_periods`` (which ids are out-of-vocabulary to the
model), a KB's ``known_through``, a size. Files written before this header existed carry no
such digests: their descriptions are checked only for what can be checked (shapes against
the weights, periods against the data).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from fined.errors import FinedError

KEY = "fined.description"  # in the safetensors header's metadata


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digests(description: dict[str, Any], exclude: Iterable[str]) -> dict[str, str]:
    """A digest per key, and per key of a section (``model_config.embedding_dim``), so that
    what changed can be named."""
    left_out = set(exclude)
    out = {}
    for key, value in description.items():
        if key in left_out:
            continue
        if isinstance(value, dict) and value:
            out.update({f"{key}.{k}": _digest(v) for k, v in value.items()})
        else:
            out[key] = _digest(value)
    return out


def header_entry(description: dict[str, Any], exclude: Iterable[str] = ()) -> dict[str, str]:
    """The metadata a weights file carries for ``description`` (what it will be written
    with, less the ``exclude`` keys: those about the weights file itself)."""
    # Through JSON first: the digests are of what the description file will read back as.
    digests = _digests(json.loads(json.dumps(description)), exclude)
    return {KEY: json.dumps(digests, sort_keys=True)}


def check_description(
    description: dict[str, Any], path: Path, weights: Path, exclude: Iterable[str] = ()
) -> None:
    """``description`` (read from ``path``) is what ``weights`` was written with; a key
    edited, added or removed is a FinedError naming it."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            written = (f.metadata() or {}).get(KEY)
    except FileNotFoundError:
        raise FinedError(f"{weights}: no such file (weights file)") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise FinedError(f"{weights}: not a valid weights file (safetensors: {err})") from None
    if written is None:
        return  # written before descriptions were vouched for
    try:
        digests = json.loads(written)
    except ValueError:
        raise FinedError(f"{weights}: its header's description digests are corrupt") from None
    current = _digests(description, exclude)
    said = [f"{k} added" for k in sorted(current.keys() - digests.keys())]
    said += [f"{k} removed" for k in sorted(digests.keys() - current.keys())]
    said += [f"{k} changed" for k in sorted(current.keys() & digests.keys())
             if current[k] != digests[k]]  # fmt: skip
    if said:
        raise FinedError(
            f"{path}: edited since it was written with {weights.name} ({', '.join(said)}); "
            "a description and its weights are written together: restore it, or retrain"
        )
