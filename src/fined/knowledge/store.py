"""A knowledge base on disk: ``kb.safetensors`` (weights) + ``kb.json`` (what it is).

``kb.json`` records the feature-map fingerprint, the periods it memorized, K and the
dimensions, the loss weights (the whole config) and the training metrics. Loading it against
data with another feature map fails with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fined.data.feature_map import FeatureMap
from fined.data.schema import parse_model
from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.knowledge.base import KBConfig, KnowledgeBase
from fined.weights import load_weights, save_weights

WEIGHTS, META = "kb.safetensors", "kb.json"
# Bumped whenever the KB's weights change layout (2: the extractor's own attention block and
# the encoder's separate mu / log-variance heads), so that an old file is refused by name.
FORMAT = 2


def save_kb(
    directory: str | Path, kb: KnowledgeBase, periods: list[int], metrics: dict[str, Any]
) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS, kb)
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
            "metrics": metrics,
        },
    )


def kb_info(directory: str | Path) -> dict[str, Any]:
    return read_json(Path(directory) / META, "knowledge-base description")


def build_kb(meta: dict[str, Any], feature_map: FeatureMap) -> KnowledgeBase:
    """An untrained KB shaped as ``meta`` describes (weights loaded separately)."""
    if meta.get("format", 1) != FORMAT:
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
    return KnowledgeBase(feature_map, config, known_through=meta["known_through"])


def load_kb(directory: str | Path, feature_map: FeatureMap) -> tuple[KnowledgeBase, dict[str, Any]]:
    directory = Path(directory)
    meta = kb_info(directory)
    kb = build_kb(meta, feature_map)
    load_weights(directory / WEIGHTS, kb)
    kb.eval()
    return kb, meta


def kb_bytes(kb: KnowledgeBase) -> int:
    """The size of the KB's weights file: what keeping this knowledge costs."""
    from safetensors.torch import save

    return len(save({k: v.detach().contiguous() for k, v in kb.state_dict().items()}))
