"""A FINED model: a base CTR model fed instance-wise knowledge by a knowledge base.

The base model is built with ``knowledge_tokens = m``; the adaptor turns the KB's knowledge
vectors into m tokens appended to its field matrix (see ``fined.knowledge.adaptor``), and,
by default, the KB's own click predictions are a second teacher (``kb_distill``).

What of the past is let in is asked of the rows of now, per pattern: each slot's click score
(the KB's head is additive over slots) is checked against the labels of every training
batch (``ranks_beyond_chance``), and ``slot_earned``, the share of recent batches on which
it ranked the clicks beyond chance, weighs what the tokens read of that slot and its share
of the KB's teacher; ``kb_earned`` then asks the same of the teacher as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from fined.data.batch import Batch, RowKnowledge
from fined.knowledge.adaptor import AdaptorConfig, KnowledgeAdaptor
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.ctr_model import CTRModel
from fined.models.scoring import KnowledgeDescription, ModelDescription, ScoringModel
from fined.models.trainable import Forward, OwnLoss, no_loss

EARNED_STEP = 0.1  # kb_earned follows the last ~10 batches: a period's first steps decide


@dataclass(frozen=True)
class KBVerdict:
    """The KB on a training batch: its click probabilities (its slots weighed by
    ``slot_earned``), whether they earn it its place (``kb_earned``; None where the model
    does not scale by it) and each slot's own verdict (None without slot verdicts)."""

    prob: torch.Tensor  # [B]
    earned: torch.Tensor | None  # [] 0 or 1
    slots: torch.Tensor | None  # [K] 0 or 1


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
    slot_earned: torch.Tensor  # a buffer [K]: how far each slot's pattern holds now, 0..1

    def __init__(self, base: CTRModel, kb: KnowledgeBase, config: AdaptorConfig) -> None:
        super().__init__()
        if base.knowledge_tokens != config.tokens:
            raise ValueError(
                f"the base model takes {base.knowledge_tokens} knowledge tokens, "
                f"the adaptor gives {config.tokens}"
            )
        self.base, self.kb, self.adaptor_config = base, kb, config
        self.adaptor = (
            KnowledgeAdaptor(
                base.embedding.num_fields,
                base.config.embedding_dim,
                kb.config.dim,
                config.tokens,
                config.attention_dim,
                config.gate_bias,
                config.start_closed,
            )
            if config.tokens
            else None  # the KB as a teacher only
        )
        self.kb.requires_grad_(config.finetune_lr is not None)
        # How far the KB has earned its place on the rows this model trains on (0..1): the
        # tokens and the pull towards the KB are scaled by it. It starts at 0 (the model is
        # its base model until the KB shows it predicts the current rows) and is saved with
        # the model: evaluation and export read it. 1, fixed, without ``kb_earned``.
        self.register_buffer("kb_earned", torch.tensor(0.0 if config.kb_earned else 1.0))
        # Each slot's share of that: 0 at the start with slot verdicts, else 1 (every slot).
        start = 0.0 if config.slot_verdicts else 1.0
        self.register_buffer("slot_earned", torch.full((kb.config.slots,), start))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Models saved before slots had verdicts let every slot in. (A frozen snapshot saves
        # none of its buffers, and reads none.)
        if "slot_earned" not in self._non_persistent_buffers_set:
            state_dict.setdefault(prefix + "slot_earned", torch.ones_like(self.slot_earned))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def describe(self) -> ModelDescription:
        """The base model's description, with the KB and adaptor it is fed through."""
        fed = KnowledgeDescription(self.kb.config, self.kb.known_through, self.adaptor_config)
        return replace(self.base.describe(), knowledge=fed)

    def knowledge(self, batch: Batch) -> torch.Tensor:
        """The KB's knowledge ``V [B, K, d]`` of the rows: as computed once for the rows of
        the fit where the trainer did (``row_knowledge``), else now; differentiable only
        when fine-tuning the KB (in evaluation a fine-tuned KB is deterministic too, and
        takes the fast frozen path)."""
        # An exported graph (``fined export``) takes the functional path: the in-place fast
        # one writes into views and branches on values, which a graph cannot replay.
        exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if batch.knowledge is not None and not exporting:
            return self._attached(batch.knowledge).v
        if not exporting and (self.adaptor_config.finetune_lr is None or not self.training):
            return self.kb.query(batch)[0]
        return self.kb.encode(batch).v

    def _attached(self, knowledge: RowKnowledge) -> RowKnowledge:
        """Knowledge computed for the rows beforehand, which only a frozen KB's can be."""
        if self.adaptor_config.finetune_lr is not None:
            raise ValueError("rows carry knowledge computed beforehand, but this KB is fine-tuned")
        expected = (self.kb.config.slots, self.kb.config.dim)
        if tuple(knowledge.v.shape[1:]) != expected:
            raise ValueError(
                f"rows carry knowledge of shape {tuple(knowledge.v.shape[1:])}, this KB gives "
                f"{expected}"
            )
        return knowledge

    def row_knowledge(self) -> Callable[[Batch], RowKnowledge] | None:
        """A frozen KB's knowledge of each row, for the trainer to compute once for the rows
        of a fit (None when the KB is fine-tuned: it changes every step)."""
        return self.kb.knowledge_of if self.adaptor_config.finetune_lr is None else None

    def forward_train(self, batch: Batch) -> FinedForward:
        """Logits, the base model's field vectors and (in training) the KB's verdict on these
        rows."""
        fields = self.base.embedding(batch)
        knowledge = self.knowledge(batch)
        # (a copy: the buffer moves on in auxiliary_step, before this step's backward)
        slots = self.slot_earned.clone()
        tokens = self._tokens(fields, knowledge, slots)
        logits = self.base.interact(self.base.append_tokens(fields, tokens), batch)
        config, verdict = self.adaptor_config, None
        if self.training and (config.kb_distill or config.kb_earned):  # else nothing reads them
            with torch.no_grad():
                attached = batch.knowledge
                shares = (attached.slot_logits if attached is not None
                          else self.kb.slot_logits(knowledge)).float()  # fmt: skip
                # A slot let in by a share w gives w of its score and 1 - w of its mean:
                # what a slot whose pattern is gone says of a row is what it says of all.
                mean = shares.mean(0)
                past = torch.sigmoid((mean + slots * (shares - mean)).sum(1))
                earned = ranks_beyond_chance(past, batch.label) if config.kb_earned else None
                own = ranks_beyond_chance(shares, batch.label) if config.slot_verdicts else None
                verdict = KBVerdict(past, earned, own)
        return FinedForward(logits=logits, fields=fields, kb=verdict)

    def _tokens(
        self, fields: torch.Tensor, knowledge: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor | None:
        """The knowledge tokens ``[B, m, d]`` (None without an adaptor): what the adaptor
        reads of the slots as far as each has earned its place, all as far as the KB has."""
        if self.adaptor is None:
            return None
        tokens = self.adaptor(fields, knowledge, slots if self.adaptor_config.slot_verdicts
                              else None)  # fmt: skip
        return tokens * self.kb_earned.to(fields.dtype, copy=True)

    @torch.no_grad()
    def token_share(self, batch: Batch) -> float:
        """How open the knowledge channel is on these rows: the tokens' mean norm over the
        mean norm of the base model's field vectors (0: shut, as at the start)."""
        fields = self.base.embedding(batch)
        tokens = self._tokens(fields, self.knowledge(batch), self.slot_earned.clone())
        if tokens is None or not len(batch):
            return 0.0
        return float(tokens.norm(dim=-1).mean() / fields.norm(dim=-1).mean().clamp_min(1e-12))

    @torch.no_grad()
    def slot_scores(self, batch: Batch) -> torch.Tensor:
        """Each slot's own click score ``[B, K]`` (its share of the KB's logit) for the rows."""
        return self.kb.slot_logits(self.knowledge(batch))

    def auxiliary_step(self, out: FinedForward) -> None:
        """How far the KB, and each of its slots, has earned its place: a moving share of
        the recent batches on which it did (``kb_earned``, ``slot_earned``), over about ten
        steps."""
        if out.kb is not None and out.kb.earned is not None:
            self.kb_earned.lerp_(out.kb.earned.to(self.kb_earned.dtype), EARNED_STEP)
        if out.kb is not None and out.kb.slots is not None:
            self.slot_earned.lerp_(out.kb.slots.to(self.slot_earned.dtype), EARNED_STEP)

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


def ranks_beyond_chance(scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """1 where a score ranks this batch's clicks beyond chance, else 0, on the device (no
    step waits for it): ``scores`` ``[B]`` (the KB's click probabilities: ``kb_earned``) or
    ``[B, K]`` (each slot's click score: ``slot_earned``), each column's correlation with the
    labels beyond twice its standard error under no relation (2 / sqrt(B)). A random KB, or
    one whose past no longer holds, earns it on about 2 % of batches by chance; one that
    predicts the rows at all, on nearly all. Ranks, not log-loss: a KB may rank well and be
    calibrated to another period's click rate."""
    s, y = scores.float(), label.float()
    s, y = s - s.mean(0), y - y.mean()
    if s.dim() == 2:
        y = y.unsqueeze(1)
    spread = (s.pow(2).mean(0).sqrt() * y.pow(2).mean().sqrt()).clamp_min(1e-12)
    corr = (s * y).mean(0) / spread
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
