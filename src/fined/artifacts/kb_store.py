"""A knowledge base on disk: ``kb.safetensors`` (weights) + ``kb.json`` (what it is).

``kb.json`` records the feature-map fingerprint, the periods it memorized, K and the
dimensions, the loss weights (the whole config), the training metrics and the weights'
sha256. It is written after the weights and checked against them on load; loading it against
data with another feature map, or a hand-edited description, fails with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fined.artifacts.weights import load_weights, save_weights
from fined.config import parse_model
from fined.data.feature_map import FeatureMap
from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase

WEIGHTS, META = "kb.safetensors", "kb.json"
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
    digest = save_weights(directory / WEIGHTS, kb)
    fmap = kb.feature_map
    atomic_write_json(
        directory / META,
        {
            "format": FORMAT,
            "fingerprint": fmap.fingerprint,
            "dataset": fmap.dataset,
            "periods": periods,
            "period_names": [fmap.periods[p].name for p in periods],
            "known_through": kb.known_through,
            "config": kb.config.model_dump(),
            "parameters": sum(v.numel() for v in kb.state_dict().values()),
            "bytes": (directory / WEIGHTS).stat().st_size,
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
        kb = build_kb(meta, feature_map)
    except FinedError as err:
        raise FinedError(f"{directory / META}: {err}") from None
    load_weights(directory / WEIGHTS, kb, meta["weights_sha256"])
    kb.eval()
    return kb, meta


def kb_bytes(kb: KnowledgeBase) -> int:
    """The size of the KB's weights file: what keeping this knowledge costs."""
    from safetensors.torch import save

    return len(save({k: v.detach().contiguous() for k, v in kb.state_dict().items()}))
