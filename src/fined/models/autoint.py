"""AutoInt (Song et al., CIKM 2019): stacked multi-head self-attention over the field vectors
(each layer lets every field attend to every other, with a residual connection), then one
linear logit over the flattened output. AutoInt+ (``use_mlp``) adds an MLP over the field
vectors in parallel."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.models.ctr_model import CTRModel, ModelConfig, register_model
from fined.models.interaction import SelfAttentionLayer


class AutoIntConfig(ModelConfig):
    # FuxiCTR's defaults (its AutoInt adds the DNN whenever it has hidden units, i.e.
    # AutoInt+); the paper's Criteo setting is 3 layers, 2 heads, 32 dimensions per head.
    attention_layers: int = Field(2, ge=1)
    num_heads: int = Field(1, ge=1)
    attention_dim: int = Field(8, ge=1)  # output width of a layer, split across the heads
    residual: bool = True
    layer_norm: bool = False
    use_mlp: bool = True  # AutoInt+: the MLP (``mlp``) beside the attention

    @model_validator(mode="after")
    def _check(self) -> AutoIntConfig:
        if self.attention_dim % self.num_heads:
            raise ValueError(
                f"attention_dim ({self.attention_dim}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        return self


@register_model("autoint")
class AutoInt(CTRModel):
    config_class = AutoIntConfig

    def __init__(
        self, feature_map: FeatureMap, config: AutoIntConfig, knowledge_tokens: int = 0
    ) -> None:
        super().__init__(feature_map, config, knowledge_tokens)
        c = config
        dims = [c.embedding_dim] + [c.attention_dim] * c.attention_layers
        self.attention = nn.Sequential(
            *(
                SelfAttentionLayer(i, c.attention_dim, c.num_heads, c.residual, c.layer_norm)
                for i in dims[:-1]
            )
        )
        self.out = nn.Linear(self.num_fields * c.attention_dim, 1)
        self.mlp = self.config_mlp(self.num_fields * c.embedding_dim) if c.use_mlp else None

    def interact(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``[B, F, d] -> [B]``."""
        logit = self.out(self.attention(fields).flatten(1)).squeeze(1)  # [B, F, a] -> [B]
        if self.mlp is not None:
            logit = logit + self.mlp(fields.flatten(1)).squeeze(1)
        return logit
