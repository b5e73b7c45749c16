"""DCN (Wang et al., ADKDD 2017) and DCN-V2 (Wang et al., WWW 2021): a cross network and an
MLP side by side over the concatenated field vectors, their outputs concatenated into one
linear logit (the parallel structure of both papers)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.models.ctr_model import CTRModel, ModelConfig, register_model
from fined.models.interaction import CrossNetV1, CrossNetV2


class DCNConfig(ModelConfig):
    version: Literal["v1", "v2"] = "v1"  # v1: vector cross weights; v2: full-rank (DCN-V2)
    cross_layers: int = Field(3, ge=1)


@register_model("dcn")
class DCN(CTRModel):
    config_class = DCNConfig

    def __init__(
        self, feature_map: FeatureMap, config: DCNConfig, knowledge_tokens: int = 0
    ) -> None:
        super().__init__(feature_map, config, knowledge_tokens)
        width = self.num_fields * config.embedding_dim
        cross = CrossNetV1 if config.version == "v1" else CrossNetV2
        self.cross = cross(width, config.cross_layers)
        # An empty `mlp` leaves the cross network alone (the paper's "cross only" ablation).
        self.deep = self.config_mlp(width, out=None) if config.mlp else None
        self.out = nn.Linear(width + (self.deep.out_dim if self.deep else 0), 1)

    def interact(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``[B, F, d] -> [B]``."""
        x0 = fields.flatten(1)  # [B, F d]
        # Deep part first: appended knowledge fields then only widen the tail of every input,
        # so a model without them can be copied into one with them (a warm start).
        parts = [self.deep(x0)] if self.deep is not None else []
        parts.append(self.cross(x0))
        return self.out(torch.cat(parts, 1) if len(parts) > 1 else parts[0]).squeeze(1)
