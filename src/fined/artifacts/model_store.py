"""A trained model on disk: ``model.safetensors`` (weights) + ``model.json`` (what it is).

``model.json`` records the model name and config, the trainer config, the feature-map
fingerprint, the periods it was trained on and its metrics, the weights' sha256, and for a
FINED model the knowledge base's and the adaptor's configs (the KB's weights travel inside
the model's, so a run directory is self-contained). It is written after the weights and
checked against them on load; loading against a dataset with a different fingerprint, or a
hand-edited description, fails with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fined.artifacts.description import check_description, header_entry
from fined.artifacts.kb_store import FORMAT as KB_FORMAT
from fined.artifacts.kb_store import KBShape, build_kb
from fined.artifacts.weights import (
    check_shapes,
    fit_weights,
    read_weights,
    save_weights,
    size_fields,
)
from fined.config import parse_model
from fined.data.feature_map import FeatureMap
from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.fined_model import FinedModel
from fined.models.ctr_model import build_model
from fined.models.scoring import ScoringModel

WEIGHTS = "model.safetensors"
META = "model.json"
OF_WEIGHTS = ("weights_sha256",)  # keys of model.json about its weights file, not the model


class ModelInfo(BaseModel):
    """What ``model.json`` must hold to rebuild and check a model (other keys: its record)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    model: str
    settings: dict[str, Any] = Field(alias="model_config")
    knowledge_tokens: int = Field(0, ge=0)
    fingerprint: str
    weights_sha256: str
    kb: KBShape | None = None
    adaptor: dict[str, Any] | None = None
    train_periods: list[int] = Field(default_factory=list)


def describe_model(model: ScoringModel[Any]) -> dict[str, Any]:
    """What it takes to rebuild ``model`` (before its weights are loaded), as ``model.json``
    records it."""
    about = model.describe()
    fingerprint = about.feature_map.fingerprint
    meta: dict[str, Any] = {
        "model": about.model,
        "model_config": about.settings.model_dump(),
        "knowledge_tokens": about.knowledge_tokens,
        "fingerprint": fingerprint,
    }
    if about.knowledge is not None:
        meta["kb"] = {
            "format": KB_FORMAT,
            "config": about.knowledge.kb.model_dump(),
            "known_through": about.knowledge.known_through,
            "fingerprint": fingerprint,
        }
        meta["adaptor"] = about.knowledge.adaptor.model_dump()
    return meta


def rebuild_model(meta: dict[str, Any], feature_map: FeatureMap) -> ScoringModel[Any]:
    """An untrained model shaped as a (checked) description says."""
    info = parse_model(ModelInfo, meta, "model description")
    base = build_model(
        info.model, feature_map, info.settings, knowledge_tokens=info.knowledge_tokens
    )
    if info.kb is None:
        return base
    adaptor = parse_model(AdaptorConfig, info.adaptor or {}, "adaptor config")
    try:
        return FinedModel(base, build_kb(info.kb.model_dump(), feature_map), adaptor)
    except ValueError as err:  # e.g. token counts that disagree
        raise FinedError(f"model description: {err}") from None


def check_fits_weights(meta: dict[str, Any], feature_map: FeatureMap, weights: Path) -> None:
    """The model a description makes has the shapes of the weights file: checked on the
    meta device (no memory taken), so that an edited size (``embedding_dim: 10**12``) is
    refused by name instead of being allocated."""
    sections = {
        "knowledge_tokens": meta.get("knowledge_tokens"),
        "model_config": meta.get("model_config"),
        "kb.config": (meta.get("kb") or {}).get("config"),
        "adaptor": meta.get("adaptor"),
    }
    check_shapes(lambda: rebuild_model(meta, feature_map), weights, size_fields(sections))


def check_periods(meta: dict[str, Any], feature_map: FeatureMap) -> None:
    """The periods a description names are periods of the data (an edited or foreign
    ``train_periods`` decides which ids are out-of-vocabulary to the model)."""
    count = len(feature_map.periods)
    outside = [p for p in meta.get("train_periods") or [] if not 0 <= p < count]
    if outside:
        raise FinedError(
            f"train_periods names period {outside[0]}, but the data has periods 0..{count - 1} "
            "(edited? or a model of other data)"
        )


def save_model(run_dir: str | Path, model: ScoringModel[Any], info: dict[str, Any]) -> str:
    """The weights, then their description (last: it vouches for them by their digest);
    returns the digest."""
    run_dir = Path(run_dir)
    described = {**describe_model(model), **info}
    digest = save_weights(run_dir / WEIGHTS, model, header_entry(described, OF_WEIGHTS))
    atomic_write_json(run_dir / META, {**describe_model(model), "weights_sha256": digest, **info})
    return digest


def read_model_info(run_dir: str | Path) -> dict[str, Any]:
    """``model.json``, checked to hold what a model is rebuilt from."""
    path = Path(run_dir) / META
    meta = read_json(path, "model description")
    parse_model(ModelInfo, meta, str(path))
    return meta


def known_through(meta: dict[str, Any], feature_map: FeatureMap) -> int:
    """The last period whose ids a saved model knows: the last it was trained on (every
    period of the data when its description names none); later ids are OOV to it."""
    return max(meta.get("train_periods") or [len(feature_map.periods) - 1])


def load_model(
    run_dir: str | Path, feature_map: FeatureMap
) -> tuple[ScoringModel[Any], dict[str, Any]]:
    """Rebuild a saved model for ``feature_map`` (which must be the one it was trained on)."""
    run_dir = Path(run_dir)
    meta = read_model_info(run_dir)
    if meta.get("fingerprint") != feature_map.fingerprint:
        raise FinedError(
            f"{run_dir}: trained on data with feature-map fingerprint {meta.get('fingerprint')}, "
            f"but this dataset has {feature_map.fingerprint} (prepare the same data, or retrain)"
        )
    weights = run_dir / WEIGHTS
    try:  # what the data and the weights' header can check, before any allocation
        check_periods(meta, feature_map)
        check_fits_weights(meta, feature_map, weights)
    except FinedError as err:
        raise FinedError(f"{run_dir / META}: {err}") from None
    # The weights it vouches for, and it, as they were written together.
    state = read_weights(weights, meta["weights_sha256"])
    check_description(meta, run_dir / META, weights, OF_WEIGHTS)
    try:
        model = rebuild_model(meta, feature_map)
    except FinedError as err:
        raise FinedError(f"{run_dir / META}: {err}") from None
    fit_weights(weights, model, state)
    model.eval()
    return model, meta
