"""A FINED model: a base CTR model fed instance-wise knowledge by a knowledge base.

The base model is built with ``knowledge_tokens = m``; the adaptor turns the KB's knowledge
vectors into m tokens appended to its field matrix (see ``fined.knowledge.adaptor``), and,
by default, the KB's own click predictions are a second teacher (``kb_distill``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.knowledge.adaptor import AdaptorConfig, KnowledgeAdaptor
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.ctr_model import CTRModel
from fined.models.trainable import Forward, OwnLoss, Trainable, no_loss


class FinedModel(Trainable):
    """A base CTR model (built with ``knowledge_tokens = m``) fed by a knowledge base."""

    base: CTRModel
    kb: KnowledgeBase

    def __init__(self, base: CTRModel, kb: KnowledgeBase, config: AdaptorConfig) -> None:
        super().__init__()
        if base.knowledge_tokens != config.tokens:
            raise ValueError(
                f"the base model takes {base.knowledge_tokens} knowledge tokens, "
                f"the adaptor gives {config.tokens}"
            )
        self.base, self.kb, self.adaptor_config = base, kb, config
        self.adaptor = KnowledgeAdaptor(
            base.embedding.num_fields,
            base.config.embedding_dim,
            kb.config.dim,
            config.tokens,
            config.attention_dim,
            config.gate_bias,
        )
        self.kb.requires_grad_(config.finetune_lr is not None)

    # The trainer and artefacts look at these, as on any CTRModel.
    @property
    def model_name(self) -> str:
        return type(self.base).model_name

    @property
    def feature_map(self) -> FeatureMap:
        return self.base.feature_map

    def knowledge(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, gates)`` for the batch; differentiable only when fine-tuning the KB (in
        evaluation a fine-tuned KB is deterministic too, and takes the fast frozen path)."""
        # An exported graph (``fined export``) takes the functional path: the in-place fast
        # one writes into views and branches on values, which a graph cannot replay.
        exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not exporting and (self.adaptor_config.finetune_lr is None or not self.training):
            return self.kb.query(batch)
        out = self.kb.encode(batch)
        return out["v"], out["z"]

    def forward_train(self, batch: Batch) -> Forward:
        """Logits, the base model's field vectors and the knowledge the tokens came from."""
        fields = self.base.embedding(batch)
        knowledge = self.knowledge(batch)[0]
        tokens = self.adaptor(fields, knowledge)
        logits = self.base.interact(torch.cat([fields, tokens], 1), batch)
        return Forward(logits, fields, {"knowledge": knowledge})

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_train(batch).logits

    def own_loss(self, batch: Batch, out: Forward) -> OwnLoss:
        """``kb_distill`` times the BCE towards the KB's own click probabilities for the same
        knowledge, spread over the instances as ``kb_trust`` says (in training only:
        evaluation adds nothing)."""
        weight = self.adaptor_config.kb_distill
        if not weight or not self.training:
            return no_loss(out)
        with torch.no_grad():
            past = torch.sigmoid(self.kb.click_logits(out.parts["knowledge"]))
            trust = kb_trust(self.adaptor_config.kb_trust, past, out.parts.get("teacher.prob"))
        per_row = F.binary_cross_entropy_with_logits(out.logits, past, reduction="none")
        term = per_row.mean() if trust is None else (trust * per_row).mean()
        return OwnLoss(weight * term, {"kb_distill": term.detach()})

    def train(self, mode: bool = True) -> FinedModel:
        super().train(mode)
        if self.adaptor_config.finetune_lr is None:
            self.kb.eval()  # a frozen KB keeps deterministic gates and v = mu
        return self

    def parameter_groups(self) -> list[dict]:
        """The base model and adaptor at the trainer's rate; the KB, when fine-tuned, at its own."""
        own = [p for n, p in self.named_parameters() if not n.startswith("kb.") and p.requires_grad]
        groups: list[dict] = [{"params": own}]
        if self.adaptor_config.finetune_lr is not None:
            kb = self.kb.parameter_groups()[0]["params"]
            groups.append({"params": kb, "lr": self.adaptor_config.finetune_lr})
        return groups


def kb_trust(rule: str, past: torch.Tensor, recent: torch.Tensor | None) -> torch.Tensor | None:
    """Per-instance weights ``[B]`` of the pull towards the KB's probabilities ``past``, with
    mean 1 over the batch (None: all 1). ``recent``: the previous period's model's
    probabilities, for the rules that compare the two."""
    if rule == "constant":
        return None
    if rule == "confidence":
        raw = (2 * past - 1).abs()
    elif recent is None:
        raise ValueError(f"kb_trust {rule!r} needs a model of the previous period (kd_weight > 0)")
    elif rule == "disagreement":
        raw = (past - recent).abs()
    else:  # agreement
        raw = 1 - (past - recent).abs()
    return raw / raw.mean().clamp_min(1e-6)
