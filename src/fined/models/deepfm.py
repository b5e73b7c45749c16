"""DeepFM (Guo et al., IJCAI 2017): a first-order term, an FM over the field vectors and an
MLP over their concatenation, summed into one logit."""

from __future__ import annotations

import torch

from fined.data.batch import Batch
from fined.models.ctr_model import CTRModel, ModelConfig, register_model
from fined.models.layers import FactorizationMachine


@register_model("deepfm")
class DeepFM(CTRModel):
    config_class = ModelConfig
    uses_linear = True

    def __init__(self, feature_map, config: ModelConfig, knowledge_tokens: int = 0) -> None:
        super().__init__(feature_map, config, knowledge_tokens)
        self.fm = FactorizationMachine()
        self.mlp = self.config_mlp(self.num_fields * config.embedding_dim)

    def interact(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:
        deep = self.mlp(fields.flatten(1)).squeeze(1)
        return self.embedding.linear_logit(batch) + self.fm(fields) + deep
