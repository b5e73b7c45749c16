"""PNN (Qu et al., ICDM 2016): a product layer over the field vectors (inner products of all
field pairs for IPNN, the sum-pooled outer product for OPNN), concatenated with the flattened
field vectors, then an MLP. The first MLP layer on ``[z, p]`` is the paper's ``l_z + l_p``."""

from __future__ import annotations

from typing import Literal

import torch

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.models.ctr_model import CTRModel, ModelConfig, register_model
from fined.models.interaction import InnerProduct, OuterProduct


class PNNConfig(ModelConfig):
    product: Literal["inner", "outer"] = "inner"  # IPNN, or OPNN (sum-pooled outer product)


@register_model("pnn")
class PNN(CTRModel):
    config_class = PNNConfig

    def __init__(
        self, feature_map: FeatureMap, config: PNNConfig, knowledge_tokens: int = 0
    ) -> None:
        super().__init__(feature_map, config, knowledge_tokens)
        d = config.embedding_dim
        inner = config.product == "inner"
        self.product = InnerProduct(self.num_fields) if inner else OuterProduct(d)
        self.mlp = self.config_mlp(self.num_fields * d + self.product.out_dim)

    def interact(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``[B, F, d] -> [B]``."""
        z = fields.flatten(1)  # [B, F d]: the linear signals
        p = self.product(fields)  # [B, P]: the quadratic signals
        return self.mlp(torch.cat([z, p], 1)).squeeze(1)
