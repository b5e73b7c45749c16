"""A knowledge base on disk: ``kb.safetensors`` (weights) + ``kb.json`` (what it is).

``kb.json`` records the feature-map fingerprint, the periods it memorized, K and the
dimensions, the loss weights (the whole config), the training metrics and the weights'
sha256. It is written after the weights and checked against them on load; loading it against
data with another feature map, or a hand-edited description, fails with a clear error.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save

from fined.artifacts.description import check_description, header_entry
from fined.artifacts.weights import check_shapes, read_weights, size_fields
from fined.config import parse_model
from fined.data.feature_map import FeatureMap
from fined.errors import FinedError
from fined.io import atomic_write_bytes, atomic_write_json, read_json
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase

WEIGHTS, META = "kb.safetensors", "kb.json"
OF_WEIGHTS = ("bytes", "weights_sha256")  # keys of kb.json about its weights file
# Bumped whenever the KB's weights change layout (2: the extractor's own attention block and
# the encoder's separate mu / log-variance heads), so that an old file is refused by name.
FORMAT = 2


class KBShape(BaseModel):
    """What a KB is rebuilt from (``kb.json``, and the ``kb`` section of a FINED model)."""

    model_config = ConfigDict(extra="allow")
    format: int = 1
    fingerprint: str
    config: dict[str, Any]
    known_through: int = Field(ge=0)


class KBInfo(KBShape):
    """``kb.json``: the shape, the periods memorized and the weights' digest."""

    periods: list[int] = Field(min_length=1)
    weights_sha256: str


def save_kb(
    directory: str | Path, kb: KnowledgeBase, periods: list[int], metrics: dict[str, Any]
) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fmap = kb.feature_map
    described = {
        "format": FORMAT,
        "fingerprint": fmap.fingerprint,
        "dataset": fmap.dataset,
        "periods": periods,
        "period_names": [fmap.periods[p].name for p in periods],
        "known_through": kb.known_through,
        "config": kb.config.model_dump(),
        "parameters": sum(v.numel() for v in kb.state_dict().values()),
    }
    blob = save(stored_tensors(kb), metadata=header_entry({**described, "metrics": metrics}))
    atomic_write_bytes(directory / WEIGHTS, blob)
    digest = hashlib.sha256(blob).hexdigest()
    atomic_write_json(
        directory / META,
        {
            **described,
            "bytes": len(blob),
            "weights_sha256": digest,  # written last: vouches for the weights beside it
            "metrics": metrics,
        },
    )


def kb_info(directory: str | Path) -> dict[str, Any]:
    """``kb.json``, checked to hold what a KB is rebuilt from."""
    path = Path(directory) / META
    meta = read_json(path, "knowledge-base description")
    parse_model(KBInfo, meta, str(path))
    return meta


def build_kb(meta: dict[str, Any], feature_map: FeatureMap) -> KnowledgeBase:
    """An untrained KB shaped as ``meta`` describes (weights loaded separately)."""
    meta = parse_model(KBShape, meta, "knowledge-base description").model_dump()
    if meta["format"] != FORMAT:
        raise FinedError(
            f"the knowledge base has format {meta.get('format', 1)}, this fined reads format "
            f"{FORMAT}: rebuild it with `fined kb build`"
        )
    if meta.get("fingerprint") != feature_map.fingerprint:
        raise FinedError(
            f"the knowledge base was built for feature map {meta.get('fingerprint')}, "
            f"this dataset has {feature_map.fingerprint}"
        )
    config = parse_model(KBConfig, meta["config"], "kb config")
    if meta["known_through"] >= len(feature_map.periods):
        raise FinedError(
            f"the knowledge base knows period {meta['known_through']}, past the data's"
        )
    try:
        return KnowledgeBase(feature_map, config, known_through=meta["known_through"])
    except ValueError as err:  # settings that do not fit together (e.g. dim and heads)
        raise FinedError(f"kb config: {err}") from None


def load_kb(directory: str | Path, feature_map: FeatureMap) -> tuple[KnowledgeBase, dict[str, Any]]:
    directory = Path(directory)
    meta = kb_info(directory)
    try:
        sizes = size_fields({"config": meta["config"]})  # checked before any allocation
        check_shapes(lambda: build_kb(meta, feature_map), directory / WEIGHTS, sizes)
    except FinedError as err:
        raise FinedError(f"{directory / META}: {err}") from None
    # The weights it vouches for, and it, as they were written together.
    stored = read_weights(directory / WEIGHTS, meta["weights_sha256"])
    check_description(meta, directory / META, directory / WEIGHTS, OF_WEIGHTS)
    try:
        kb = build_kb(meta, feature_map)
    except FinedError as err:
        raise FinedError(f"{directory / META}: {err}") from None
    state = restored_state(stored)
    try:
        kb.load_state_dict(state)
    except RuntimeError as err:
        raise FinedError(f"{directory / WEIGHTS}: weights do not fit the KB ({err})") from None
    kb.eval()
    return kb, meta


def kb_bytes(kb: KnowledgeBase) -> int:
    """The size of the KB's weights file: what keeping this knowledge costs."""
    return len(save(stored_tensors(kb)))


_SCALE = ".int8_scale"  # the per-row scales of an int8 matrix, stored beside it


def stored_tensors(kb: KnowledgeBase) -> dict[str, torch.Tensor]:
    """The KB's state as stored in ``config.storage``: floats as fp32, fp16, or (matrices)
    int8 with one fp32 scale per row (vectors then as fp16); integer buffers as they are."""
    storage = kb.config.storage
    out = {}
    for name, value in kb.state_dict().items():
        value = value.detach().cpu().contiguous()
        if not value.is_floating_point() or storage == "fp32":
            out[name] = value
        elif storage == "fp16" or value.dim() < 2 or not value.numel():
            out[name] = value.half()
        else:
            rows = value.reshape(value.shape[0], -1)
            scale = rows.abs().amax(1).clamp_min(1e-12) / 127.0
            out[name] = torch.round(rows / scale[:, None]).to(torch.int8).reshape(value.shape)
            out[name + _SCALE] = scale.float()
    return out


def restored_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict (fp32 floats) from what ``stored_tensors`` wrote."""
    out = {}
    for name, value in tensors.items():
        if name.endswith(_SCALE):
            continue
        scale = tensors.get(name + _SCALE)
        if scale is not None:
            rows = value.reshape(value.shape[0], -1).float() * scale[:, None]
            out[name] = rows.reshape(value.shape)
        else:
            out[name] = value.float() if value.dtype == torch.float16 else value
    return out


def round_through_storage(kb: KnowledgeBase) -> None:
    """Make the KB in memory the KB as stored (a no-op at fp32)."""
    if kb.config.storage != "fp32":
        kb.load_state_dict(restored_state(stored_tensors(kb)))
