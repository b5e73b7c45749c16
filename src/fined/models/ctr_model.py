"""The base class every CTR model subclasses, its configuration, and the model registry.

A model turns a ``Batch`` into click logits ``[B]``. Its field matrix ``[B, F, d]`` comes from
one ``FeatureEmbedding``; optional *knowledge tokens* ``[B, m, d]`` are appended to it as
extra fields before the interaction part, so every model's interactions (FM, cross layers,
products, CIN, self-attention, MLP) see them. This is the hook the FINED knowledge base
plugs into; nothing else here knows about it.

Hyper-parameters are typed pydantic configs whose field defaults are the models' defaults
(one place, read by ``fined train --help``-level docs and tests alike); precedence: those
defaults < a user's YAML < command-line overrides (``fined.config.resolve``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from fined.config import StrictModel, resolve
from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.errors import FinedError
from fined.models.embedding import FeatureEmbedding
from fined.models.layers import MLP, check_activation
from fined.models.scoring import ModelDescription, ScoringModel
from fined.models.trainable import Forward
from fined.registry import Registry


class ModelConfig(StrictModel):
    """Settings every model has, with their defaults (a model's config class adds its own)."""

    embedding_dim: int = Field(16, ge=1)
    mlp: list[int] = Field(default_factory=lambda: [400, 400, 400])  # the deep part's hidden layers
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False
    activation: str = "relu"
    # Sparse gradients for the embedding tables (only the rows a batch looked up), trained
    # with SparseAdam: for tables far larger than what one batch touches.
    sparse_embedding: bool = False

    _check_activation = field_validator("activation")(check_activation)


class CTRModel(ScoringModel[Forward]):
    """Base of every model. Subclasses set ``config_class`` and implement ``interact``."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    model_name: ClassVar[str] = ""  # the registry name (set by ``register_model``)
    uses_linear: bool = False  # whether the model has a first-order (LR) term

    def __init__(
        self,
        feature_map: FeatureMap,
        config: ModelConfig,
        knowledge_tokens: int = 0,
        raw_sequences: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.feature_map = feature_map
        self.config = config
        self.raw_sequences = raw_sequences  # sequences the model attends over itself (DIN)
        self.embedding = FeatureEmbedding(
            feature_map,
            config.embedding_dim,
            raw_sequences,
            linear=self.uses_linear,
            sparse=config.sparse_embedding,
        )
        self.knowledge_tokens = knowledge_tokens
        self.num_fields = self.embedding.num_fields + knowledge_tokens

    def config_mlp(self, in_dim: int, out: int | None = 1) -> MLP:
        """The model's deep part: ``config.mlp`` hidden layers with its activation, dropout
        and batch norm, then ``out`` units (None: the last hidden layer)."""
        c = self.config
        return MLP(
            in_dim, c.mlp, out=out, act=c.activation, dropout=c.dropout, batch_norm=c.batch_norm
        )

    def append_tokens(self, fields: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """``[B, F + m, d]``: the field vectors ``[B, F, d]`` with the knowledge tokens
        ``[B, m, d]`` appended (the one place tokens join the fields: their shape is checked
        here, for every caller)."""
        if tokens is None:
            if self.knowledge_tokens:
                raise ValueError(f"this model expects {self.knowledge_tokens} knowledge tokens")
            return fields
        if tokens.shape[1] != self.knowledge_tokens or tokens.shape[2] != fields.shape[2]:
            raise ValueError(
                f"knowledge tokens of shape {tuple(tokens.shape)}; expected "
                f"[B, {self.knowledge_tokens}, {fields.shape[2]}]"
            )
        return torch.cat([fields, tokens], dim=1)

    def forward(self, batch: Batch, knowledge: torch.Tensor | None = None) -> torch.Tensor:
        """Click logits ``[B]``; ``knowledge``: optional tokens ``[B, m, d]``."""
        return self.interact(self.append_tokens(self.embedding(batch), knowledge), batch)

    def forward_train(self, batch: Batch) -> Forward:
        """The trainer's forward: logits and the field vectors (for the embedding penalty)."""
        fields = self.embedding(batch)
        return Forward(logits=self.interact(self.append_tokens(fields, None), batch), fields=fields)

    def interact(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> ModelDescription:
        return ModelDescription(
            self.model_name, self.config, self.knowledge_tokens, self.feature_map
        )


MODELS: Registry[type[CTRModel]] = Registry(
    "model", "fined.models", ("deepfm", "dcn", "pnn", "xdeepfm", "autoint", "din")
)


def register_model(name: str):
    def wrap(cls: type[CTRModel]) -> type[CTRModel]:
        cls.model_name = name
        return MODELS.register(name)(cls)

    return wrap


def model_names() -> list[str]:
    return MODELS.names()


def model_class(name: str) -> type[CTRModel]:
    return MODELS.get(name)


def model_config(name: str, *overrides: dict[str, Any] | ModelConfig | None) -> ModelConfig:
    """The model's config: its class's defaults, then each override in turn (a user file,
    then command-line settings; a config given whole counts as all its settings)."""
    layers = [o.model_dump() if isinstance(o, ModelConfig) else o for o in overrides]
    return resolve(model_class(name).config_class, *layers, where=f"model {name}")


def build_model(
    name: str,
    feature_map: FeatureMap,
    *overrides: dict[str, Any] | ModelConfig | None,
    knowledge_tokens: int = 0,
) -> CTRModel:
    """A model by registry name, its config merged from defaults and overrides."""
    cls = model_class(name)
    config = model_config(name, *overrides)
    try:
        return cls(feature_map, config, knowledge_tokens=knowledge_tokens)
    except ValueError as err:  # a config that does not fit this data (e.g. no history for DIN)
        raise FinedError(f"model {name}: {err}") from None
