"""xDeepFM (Lian et al., KDD 2018): a first-order term, a compressed interaction network
(explicit, vector-wise interactions of bounded order) and an MLP (implicit, bit-wise ones),
summed into one logit."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.models.ctr_model import CTRModel, ModelConfig, register_model
from fined.models.interaction import CIN


class XDeepFMConfig(ModelConfig):
    # FuxiCTR's default CIN; the paper's Criteo setting, [200, 200, 200] with split-half, is
    # ~150x the arithmetic (515 samples/s and 9 GB at batch 4096 on 2 cores, benchmarks/).
    cin_layers: list[int] = Field(default_factory=lambda: [16, 16, 16], min_length=1)
    cin_split_half: bool = False

    @model_validator(mode="after")
    def _check(self) -> XDeepFMConfig:
        if any(h < 1 for h in self.cin_layers):
            raise ValueError("cin_layers: every layer needs at least one feature map")
        if self.cin_split_half and any(h % 2 for h in self.cin_layers[:-1]):
            raise ValueError("cin_layers: with cin_split_half all but the last must be even")
        return self


@register_model("xdeepfm")
class XDeepFM(CTRModel):
    config_class = XDeepFMConfig
    uses_linear = True

    def __init__(
        self, feature_map: FeatureMap, config: XDeepFMConfig, knowledge_tokens: int = 0
    ) -> None:
        super().__init__(feature_map, config, knowledge_tokens)
        self.cin = CIN(self.num_fields, config.cin_layers, config.cin_split_half)
        self.cin_out = nn.Linear(self.cin.out_dim, 1)
        self.mlp = self.config_mlp(self.num_fields * config.embedding_dim)

    def interact(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``[B, F, d] -> [B]``."""
        cin = self.cin_out(self.cin(fields)).squeeze(1)
        deep = self.mlp(fields.flatten(1)).squeeze(1)
        return self.embedding.linear_logit(batch) + cin + deep
