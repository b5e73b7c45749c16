"""A trained model on disk: ``model.safetensors`` (weights) + ``model.json`` (what it is).

``model.json`` records the model name and config, the trainer config, the feature-map
fingerprint, the periods it was trained on and its metrics, and for a FINED model the
knowledge base's and the adaptor's configs (the KB's weights travel inside the model's, so a
run directory is self-contained). Loading against a dataset with a different fingerprint
fails with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fined.data.feature_map import FeatureMap
from fined.data.schema import parse_model
from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.knowledge.adaptor import AdaptorConfig, FinedModel
from fined.knowledge.store import FORMAT as KB_FORMAT
from fined.knowledge.store import build_kb
from fined.models.base import CTRModel, build_model
from fined.weights import load_weights, save_weights

WEIGHTS = "model.safetensors"
META = "model.json"


def describe_model(model: CTRModel | FinedModel) -> dict[str, Any]:
    """What it takes to rebuild ``model`` (before its weights are loaded)."""
    base = model.base if isinstance(model, FinedModel) else model
    meta = {
        "model": base.model_name,
        "model_config": base.config.model_dump(),
        "knowledge_tokens": base.knowledge_tokens,
        "fingerprint": base.feature_map.fingerprint,
    }
    if isinstance(model, FinedModel):
        meta["kb"] = {
            "format": KB_FORMAT,
            "config": model.kb.config.model_dump(),
            "known_through": model.kb.known_through,
            "fingerprint": base.feature_map.fingerprint,
        }
        meta["adaptor"] = model.adaptor_config.model_dump()
    return meta


def rebuild_model(meta: dict[str, Any], feature_map: FeatureMap) -> CTRModel | FinedModel:
    base = build_model(
        meta["model"],
        feature_map,
        meta["model_config"],
        knowledge_tokens=meta.get("knowledge_tokens", 0),
    )
    if "kb" not in meta:
        return base
    adaptor = parse_model(AdaptorConfig, meta["adaptor"], "adaptor config")
    return FinedModel(base, build_kb(meta["kb"], feature_map), adaptor)


def save_model(run_dir: str | Path, model: CTRModel | FinedModel, info: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    save_weights(run_dir / WEIGHTS, model)
    atomic_write_json(run_dir / META, {**describe_model(model), **info})


def read_model_info(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / META, "model description")


def load_model(
    run_dir: str | Path, feature_map: FeatureMap
) -> tuple[CTRModel | FinedModel, dict[str, Any]]:
    """Rebuild a saved model for ``feature_map`` (which must be the one it was trained on)."""
    run_dir = Path(run_dir)
    meta = read_model_info(run_dir)
    if meta.get("fingerprint") != feature_map.fingerprint:
        raise FinedError(
            f"{run_dir}: trained on data with feature-map fingerprint {meta.get('fingerprint')}, "
            f"but this dataset has {feature_map.fingerprint} (prepare the same data, or retrain)"
        )
    model = rebuild_model(meta, feature_map)
    load_weights(run_dir / WEIGHTS, model)
    model.eval()
    return model, meta
