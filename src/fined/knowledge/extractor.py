"""The knowledge extractor: which fields form each instance's feature patterns.

The knowledge base embeds the fields with its own table (so it can be stored and shipped
without any base model), adds a learned field-type embedding (no positions: fields are a
set), runs one or two layers of global multi-head self-attention over them, and maps each
context-aware field vector to gate logits for K pattern slots. Hard Concrete gates turn the
logits into ``z [B, F, K]``: column k is the field set of pattern k for this instance, a
feature pattern of any order.
"""

from __future__ import annotations

import torch
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.knowledge.attention import FieldAttention
from fined.knowledge.gates import HardConcreteGate
from fined.models.embedding import FeatureEmbedding
from fined.models.layers import ShortLayerNorm, normalized_linear

# Adam moves every parameter by about lr per step whatever its gradient, so these scales set
# how fast each part of a gate logit can travel: the (field, slot) prior fast (logits must
# cross from open, > 2.4, to closed, < -2.4, within a few hundred steps), the instance-wise
# shift slowly, so that it refines the slot's pattern per instance instead of replacing it.
PRIOR_SCALE = 10.0
SHIFT_SCALE = 0.03


class KnowledgeExtractor(nn.Module):
    """``batch -> (fields [B, F, d], log_alpha [B, F, K], z [B, F, K])``."""

    def __init__(
        self,
        feature_map: FeatureMap,
        dim: int,
        slots: int,
        layers: int,
        heads: int,
        dense_gates: bool = False,
        gate_init: float = 2.0,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(feature_map, dim, init_std=0.01)
        self.field_type = nn.Parameter(torch.randn(self.embedding.num_fields, dim) * 0.01)
        self.attention = FieldAttention(dim, heads, layers)
        # Gate logit of field i in slot k for an instance: a learned (field, slot) prior that
        # lets each slot pick its own fields, plus an instance-wise shift from the field's
        # context vector. The prior starts open (P(z != 0) ~ 0.97 at 2.0) and lightly
        # perturbed to break the symmetry between slots: the task shapes the patterns first,
        # then the L0 penalty closes what it does not need.
        self.gate_init = gate_init
        self.pattern_prior = nn.Parameter(0.05 * torch.randn(self.embedding.num_fields, slots))
        self.context_norm = ShortLayerNorm(dim)
        self.gate_logits = nn.Linear(dim, slots)
        nn.init.zeros_(self.gate_logits.weight)  # instance-wise shifts grow from the prior
        nn.init.zeros_(self.gate_logits.bias)
        self.gate = HardConcreteGate()
        self.dense_gates = dense_gates  # ablation: every field in every pattern

    @property
    def num_fields(self) -> int:
        return self.embedding.num_fields

    def _prior(self) -> torch.Tensor:
        """The learned (field, slot) prior of the gate logits, ``[F, K]``."""
        return self.gate_init + PRIOR_SCALE * self.pattern_prior

    def gate_offset(self) -> torch.Tensor:
        """The instance-independent part of the gate logits, ``[F, K]`` (the frozen query
        adds the scaled instance-wise shift to it)."""
        return self._prior() + SHIFT_SCALE * self.gate_logits.bias

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fields = self.embedding(batch)
        context = self.attention(fields + self.field_type)
        log_alpha = self._prior() + SHIFT_SCALE * self.gate_logits(self.context_norm(context))
        if self.dense_gates:
            return fields, log_alpha, torch.ones_like(log_alpha)
        return fields, log_alpha, self.gate(log_alpha)

    @torch.no_grad()
    def frozen_gates(self, fields: torch.Tensor) -> torch.Tensor:
        """The evaluation gates ``z [B, F, K]`` of field embeddings ``[B, F, d]``, for
        inference: the gate's fixed parts (the (field, slot) prior, the shift scale, the bias)
        folded into one ``[F, K]`` offset, the gate finished in place."""
        b, f, d = fields.shape
        if self.dense_gates:
            return fields.new_ones(b, f, self.pattern_prior.shape[-1])
        x = self.attention.forward_frozen_(fields + self.field_type)
        weight = SHIFT_SCALE * self.gate_logits.weight
        shifts = normalized_linear(self.context_norm, weight, None, x.view(-1, d))
        log_alpha = shifts.view(b, f, shifts.shape[1]).add_(self.gate_offset())  # no -1: B may be 0
        gate = self.gate
        return log_alpha.sigmoid_().mul_(gate.zeta - gate.gamma).add_(gate.gamma).clamp_(0.0, 1.0)
