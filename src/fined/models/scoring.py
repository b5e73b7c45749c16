"""What the model store and export see of a model: ``ScoringModel``, a ``Trainable`` that
scores a batch (``model(batch) -> logits [B]``) and describes itself.

A plain ``CTRModel`` and a FINED model (a base model fed by a frozen knowledge base) are
both scoring models; ``describe()`` says what each is, so the layers that save, rebuild and
export models ask it instead of testing which class they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from fined.config import StrictModel
from fined.data.feature_map import FeatureMap
from fined.models.trainable import Out, Trainable


@dataclass(frozen=True)
class KnowledgeDescription:
    """The knowledge base a model is fed by, and the adaptor between them."""

    kb: StrictModel  # the KB's config (``KBConfig``)
    known_through: int  # the last period the KB memorized
    adaptor: StrictModel  # the adaptor's config (``AdaptorConfig``)


@dataclass(frozen=True)
class ModelDescription:
    """What a scoring model is before its weights: enough to rebuild it."""

    model: str  # the base model's registry name (``deepfm``, ...)
    settings: StrictModel  # the base model's config (``ModelConfig``)
    knowledge_tokens: int  # m, the extra fields the base model takes
    feature_map: FeatureMap  # the data it scores
    knowledge: KnowledgeDescription | None = None  # None: a plain CTR model


class ScoringModel(Trainable[Out]):
    """A model that scores rows, ``model(batch) -> logits [B]``, and can say what it is
    (``Out``: the type of its training pass, as for any ``Trainable``)."""

    def describe(self) -> ModelDescription:  # pragma: no cover
        raise NotImplementedError
