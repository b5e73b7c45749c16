"""A FINED model: a base CTR model fed instance-wise knowledge by a knowledge base.

The base model is built with ``knowledge_tokens = m``; the adaptor turns the KB's knowledge
vectors into m tokens appended to its field matrix (see ``fined.knowledge.adaptor``), and,
by default, the KB's own click predictions are a second teacher (``kb_distill``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from fined.data.batch import Batch
from fined.knowledge.adaptor import AdaptorConfig, KnowledgeAdaptor
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.ctr_model import CTRModel
from fined.models.scoring import KnowledgeDescription, ModelDescription, ScoringModel
from fined.models.trainable import Forward, OwnLoss, no_loss

EARNED_STEP = 0.1  # kb_earned follows the last ~10 batches: a period's first steps decide


@dataclass(frozen=True)
class KBVerdict:
    """The KB on a training batch: its click probabilities, and whether they earn it its
    place (``kb_earned``; None where the model does not scale by it)."""

    prob: torch.Tensor  # [B]
    earned: torch.Tensor | None  # [] 0 or 1


@dataclass(frozen=True, kw_only=True)
class FinedForward(Forward):
    """A FINED model's training pass: the base model's, and (in training, where the pull or
    ``kb_earned`` reads it) the KB's verdict on the rows."""

    kb: KBVerdict | None


class FinedModel(ScoringModel[FinedForward]):
    """A base CTR model (built with ``knowledge_tokens = m``) fed by a knowledge base."""

    base: CTRModel
    kb: KnowledgeBase
    kb_earned: torch.Tensor  # a buffer: how far the KB has earned its place, 0..1

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
            config.start_closed,
        )
        self.kb.requires_grad_(config.finetune_lr is not None)
        # How far the KB has earned its place on the rows this model trains on (0..1): the
        # tokens and the pull towards the KB are scaled by it. It starts at 0 (the model is
        # its base model until the KB shows it predicts the current rows) and is saved with
        # the model: evaluation and export read it. 1, fixed, without ``kb_earned``.
        self.register_buffer("kb_earned", torch.tensor(0.0 if config.kb_earned else 1.0))

    def describe(self) -> ModelDescription:
        """The base model's description, with the KB and adaptor it is fed through."""
        fed = KnowledgeDescription(self.kb.config, self.kb.known_through, self.adaptor_config)
        return replace(self.base.describe(), knowledge=fed)

    def knowledge(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, gates)`` for the batch; differentiable only when fine-tuning the KB (in
        evaluation a fine-tuned KB is deterministic too, and takes the fast frozen path)."""
        # An exported graph (``fined export``) takes the functional path: the in-place fast
        # one writes into views and branches on values, which a graph cannot replay.
        exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not exporting and (self.adaptor_config.finetune_lr is None or not self.training):
            return self.kb.query(batch)
        out = self.kb.encode(batch)
        return out.v, out.z

    def forward_train(self, batch: Batch) -> FinedForward:
        """Logits, the base model's field vectors and (in training) the KB's verdict on these
        rows."""
        fields = self.base.embedding(batch)
        knowledge = self.knowledge(batch)[0]
        # (a copy: the buffer moves on in auxiliary_step, before this step's backward)
        tokens = self.adaptor(fields, knowledge) * self.kb_earned.to(fields.dtype, copy=True)
        logits = self.base.interact(self.base.append_tokens(fields, tokens), batch)
        config, verdict = self.adaptor_config, None
        if self.training and (config.kb_distill or config.kb_earned):  # else nothing reads them
            with torch.no_grad():
                past = torch.sigmoid(self.kb.click_logits(knowledge))
                earned = kb_earned(past, batch.label) if config.kb_earned else None
                verdict = KBVerdict(past, earned)
        return FinedForward(logits=logits, fields=fields, kb=verdict)

    def auxiliary_step(self, out: FinedForward) -> None:
        """How far the KB has earned its place: a moving share of the recent batches on
        which it did (``kb_earned``), over about ten steps."""
        if out.kb is not None and out.kb.earned is not None:
            self.kb_earned.lerp_(out.kb.earned.to(self.kb_earned.dtype), EARNED_STEP)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_train(batch).logits

    def own_loss(self, batch: Batch, out: FinedForward) -> OwnLoss:
        """``kb_distill`` times the BCE towards the KB's own click probabilities for the same
        knowledge, spread over the instances as ``kb_trust`` says (in training only:
        evaluation adds nothing)."""
        config = self.adaptor_config
        if not config.kb_distill or not self.training:
            return no_loss(out)
        if out.kb is None:
            raise ValueError("a training pass without the KB's verdict (made in training)")
        past = out.kb.prob
        recent = out.teacher.prob if out.teacher is not None else None
        with torch.no_grad():
            trust = kb_trust(config.kb_trust, past, recent)
        per_row = F.binary_cross_entropy_with_logits(out.logits, past, reduction="none")
        term = per_row.mean() if trust is None else (trust * per_row).mean()
        earned = self.kb_earned.to(term.dtype, copy=True)
        terms = {"kb_distill": term.detach(), "kb_earned": earned.detach()}
        return OwnLoss(config.kb_distill * earned * term, terms)

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


def kb_earned(past: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """1 if the KB has earned its place on this batch of current rows (rows it never trained
    on), else 0 (``[]``, on the device: no step waits for it): its click probabilities
    ``past`` [B] rank the clicks above chance, their correlation with the labels beyond
    twice its standard error under no relation (2 / sqrt(B)). A random KB, or one whose
    past no longer holds, earns it on about 2 % of batches by chance; a KB that predicts the
    rows at all, on nearly all. Ranks, not log-loss: a KB may rank well and be calibrated to
    another period's click rate."""
    p, y = past.float(), label.float()
    p, y = p - p.mean(), y - y.mean()
    corr = (p * y).mean() / (p.pow(2).mean().sqrt() * y.pow(2).mean().sqrt()).clamp_min(1e-12)
    return (corr > 2.0 / math.sqrt(max(len(label), 1))).float()


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
