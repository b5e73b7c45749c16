"""Stage 2: feed each instance the knowledge it needs, inside any base CTR model.

The knowledge adaptor forms an instance query from the base model's own field embeddings,
attends with m heads over the K knowledge vectors of the (frozen) knowledge base, projects
the m results to the base embedding size, and scales them by an instance-wise gate
``g = sigmoid(w . q)``: the instance decides how much of the past it needs. The tokens are
appended to the base model's fields, so its interaction part (FM, cross layers, products,
CIN, self-attention, DIN's MLP) works on them like on any other field. Each slot's weight
(how far its pattern holds on the rows of now, ``FinedModel``) scales what the heads read of
it: a pattern that has gone stops feeding the tokens. The tokens' output projection starts
at zero, so the model begins as its base model and the channel opens as far as it lowers
the training loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fined.config import StrictModel
from fined.models.layers import short_softmax


class AdaptorConfig(StrictModel):
    # m knowledge tokens (attention heads); 0: no tokens, the KB reaches the model only as a
    # teacher (``kb_distill``)
    tokens: int = Field(2, ge=0)
    attention_dim: int = Field(16, ge=1)  # per head
    finetune_lr: float | None = Field(None, gt=0)  # None: the KB stays frozen
    # Initial bias of the instance-wise gate (None: PyTorch's default init). Negative starts
    # the tokens nearly closed: a warm-started base model first keeps its own function.
    gate_bias: float | None = None
    # The tokens start at zero (True): the adaptor's output projection is zero-initialised
    # (LoRA's B = 0), so a FINED model starts as exactly its base model (for every base
    # model whose interaction ignores zero fields: all but AutoInt's attention) and the
    # tokens grow as fast as their m x d x d_kb output weights learn. Chosen over the
    # previous way to start closed, one learned opening per token started at 0: Adam moves a
    # single scale by about the learning rate a step, so the openings stayed within +-0.02
    # on MovieLens and the tokens never reached the model; and over tokens open from the
    # start, which slowed learning where users train few passes (docs/defaults.md: 3 epochs
    # of a synthetic log, test AUC 0.7578 for the base model, 0.6898 with open tokens alone).
    start_closed: bool = True
    # Weight of a distillation term towards the frozen KB's own click probabilities (its
    # stage-1 head over the same knowledge vectors). The tokens are the channel, this is the
    # incentive: without it the model reads from the tokens only what the current rows
    # reward, and a pattern that went away and returns finds it deaf (measured in
    # benchmarks/knowledge.py: tokens alone, or distillation without tokens, gain little or
    # lose). 0.2 is a prior fixed before that benchmark, not tuned on it; held-out rows of
    # the current period cannot choose it (they always favour forgetting the absent).
    kb_distill: float = Field(0.2, ge=0)
    # How the pull towards the KB is spread over instances (its mean stays ``kb_distill``):
    # ``constant``; ``confidence``: where the KB is sure (|2 p_kb - 1|); with a teacher of
    # the previous period beside it (``kd``), ``disagreement``: where the KB and the
    # previous model differ (what the long past adds to the recent one), or ``agreement``:
    # where they agree (the past the recent model did not reject). ``confidence``: the best
    # held-out AUC of the four on MovieLens, within 0.0003 of ``agreement`` over MovieLens
    # and the synthetic drift together, and it needs no model of t-1 (validation only;
    # docs/defaults.md).
    kb_trust: Literal["constant", "confidence", "disagreement", "agreement"] = "confidence"
    # Scale the tokens and the pull by how far the KB has earned its place on the rows the
    # model trains on: the share of recent batches on which the KB's own predictions rank
    # the clicks above chance (``fined_model.kb_earned``; it starts at 0). Chosen
    # (docs/defaults.md) because tokens from a KB that predicts nothing (random, or built on
    # labels that no longer hold) are extra features the model memorises with: 3 epochs on
    # the recurring synthetic log, test AUC 0.7816 for the base model, 0.7562 with a random
    # KB's tokens.
    kb_earned: bool = True
    # Per pattern, not per KB: each slot's weight is the share of recent batches on which
    # that slot's own click score ranks the current rows' clicks beyond chance; a slot that
    # has stopped doing so stops feeding the tokens and leaves the KB's teacher (its share of
    # the KB's logit replaced by its mean), one that starts again comes back within about
    # ten batches. False: one verdict for the whole KB.
    slot_verdicts: bool = True


class KnowledgeAdaptor(nn.Module):
    """``(fields [B, F, d], V [B, K, d_kb], slot weights [K] or None) -> tokens [B, m, d]``."""

    def __init__(
        self,
        num_fields: int,
        dim: int,
        kb_dim: int,
        tokens: int,
        attention_dim: int,
        gate_bias: float | None = None,
        start_closed: bool = False,
    ) -> None:
        super().__init__()
        self.m, self.a, self.d = tokens, attention_dim, dim
        self.query = nn.Linear(num_fields * dim, tokens * attention_dim)
        self.key = nn.Linear(kb_dim, tokens * attention_dim)
        self.value = nn.Linear(kb_dim, tokens * dim)
        self.gate = nn.Linear(tokens * attention_dim, 1)
        if gate_bias is not None:
            nn.init.constant_(self.gate.bias, gate_bias)
        if start_closed:  # AdaptorConfig.start_closed: the tokens start at zero
            nn.init.zeros_(self.value.weight)
            nn.init.zeros_(self.value.bias)
        # A learned scale per token (1 at the start; earlier versions started it at 0, and
        # their saved models load with what it learned).
        self.opening = nn.Parameter(torch.ones(tokens))

    def forward(
        self, fields: torch.Tensor, knowledge: torch.Tensor, slots: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, e = knowledge.shape
        q = self.query(fields.flatten(1))  # [B, m*a]
        # Multi-head attention with keys W_h v_k + c_h and values U_h v_k + u_h, computed
        # without projecting the K knowledge vectors (same function, a fifth of the products):
        # q_h . (W_h v_k + c_h) = (W_h^T q_h) . v_k + q_h . c_h, and the last term is the same
        # for every slot, so it cancels in the softmax; the weights sum to one, so the
        # attended value is U_h (sum_k w_hk v_k) + u_h.
        heads = q.view(b, self.m, self.a).transpose(0, 1)  # [m, B, a]
        read = torch.bmm(heads, self.key.weight.view(self.m, self.a, e)).transpose(0, 1)
        scores = torch.bmm(read, knowledge.transpose(1, 2)) / math.sqrt(self.a)  # [B, m, K]
        weights = short_softmax(scores)
        if slots is not None:  # what a slot whose pattern is gone gives: nothing
            weights = weights * slots.to(weights.dtype)
        pooled = torch.bmm(weights, knowledge).transpose(0, 1)  # [m, B, e]
        values = self.value.weight.view(self.m, self.d, e).transpose(1, 2)  # [m, e, d]
        tokens = torch.baddbmm(self.value.bias.view(self.m, 1, self.d), pooled, values)
        gate = torch.sigmoid(self.gate(q)) * self.opening  # [B, m]: instance and token
        return tokens.transpose(0, 1) * gate.unsqueeze(-1)  # [B, m, d]
