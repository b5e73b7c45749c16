"""The FINED strategies: the base model fed by a knowledge base of the past.

- ``fined``: a frozen KB of the first s periods;
- ``fined_streaming``: after each period the KB absorbs it (a few epochs on its rows,
  distilled towards its previous snapshot); its size stays fixed and no raw row is kept;
- ``fined_rebuild``: the reference for streaming: after each period the KB is rebuilt from
  all the raw past (which must therefore be kept), and swapped in under the adaptor.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fined.artifacts.kb_store import kb_bytes
from fined.data.batch import Batch
from fined.errors import FinedError
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.trainable import Trainable
from fined.models.warm_start import load_overlapping
from fined.protocol.distill import Distilled
from fined.protocol.strategies import (
    Model,
    Strategy,
    StrategyContext,
    StrategySpec,
    register_strategy,
)
from fined.protocol.strategies.replay import Reservoir
from fined.report.records import KnowledgeUse
from fined.train.metrics import auc


class FinedSpec(StrategySpec):
    kb: dict[str, Any] = Field(default_factory=dict)  # KB settings of this variant
    adaptor: dict[str, Any] = Field(default_factory=dict)  # adaptor settings of this variant
    # Fine-tune the KB at this rate (None: the run's adaptor setting, frozen by default).
    finetune_lr: float | None = Field(None, gt=0)
    # Start the base model from the shared warm-up model (False: from scratch at the first
    # period, so that all it knows of the KB's periods comes through the KB).
    warmup_base: bool = True
    # Weight of the distillation towards the KB's own predictions (None: the run's adaptor
    # setting, 0.2 by default; 0: tokens alone).
    kb_distill: float | None = Field(None, ge=0)
    # Distillation from the strategy's own model of t-1, as ``kd`` does and with kd's weight
    # (0: none): the KB beside the remedy it competes with. The default was chosen on the
    # held-out AUC over every period trained on (validation only), over MovieLens and the
    # synthetic drift; docs/defaults.md.
    kd_weight: float = Field(0.5, ge=0)
    # The bytes kept from the past in all: a reservoir of past rows fills what the KB leaves
    # (None: the KB alone, no reservoir).
    budget_bytes: int | None = Field(None, ge=1)
    # Never below the base model: each period, the base model alone, warm-started from its
    # own chain (``incremental``), is deployed instead where it has the better forward
    # record (how its models of t-1 scored P_t; ``fined.protocol.forward``). Null: FINED's
    # model alone, whatever the past is worth on this log.
    fallback: str | None = "incremental"

    def kb_overrides(self) -> dict[str, Any]:
        """This variant's KB settings (its ``kb`` section)."""
        return self.kb

    def adaptor_overrides(self) -> dict[str, Any]:
        """This variant's adaptor settings (its own finetune_lr / kb_distill, where set, on
        top of its ``adaptor`` section)."""
        own = {k: v for k, v in (("finetune_lr", self.finetune_lr),
                                 ("kb_distill", self.kb_distill)) if v is not None}  # fmt: skip
        return {**self.adaptor, **own}


@register_strategy("fined")
class Fined(Strategy):
    """The base model fed by a frozen KB of the first s periods (warm start; with
    ``kd_weight`` and ``budget_bytes`` also distilled from its model of t-1 and replaying a
    reservoir beside the KB)."""

    spec: FinedSpec
    spec_class = FinedSpec
    uses_kb = True

    def __init__(self, spec: StrategySpec, context: StrategyContext) -> None:
        super().__init__(spec, context)
        self.reservoir: Reservoir | None = None  # sized once the KB's bytes are known

    def kb(self, t: int) -> KnowledgeBase:
        return self.context.knowledge_base(None)

    def _reservoir(self, t: int) -> Reservoir | None:
        """The past rows that fit beside the KB in ``budget_bytes`` (None: no budget)."""
        if self.spec.budget_bytes is None:
            return None
        if self.reservoir is None:
            left = self.spec.budget_bytes - kb_bytes(self.kb(t))
            if left < 0:
                raise FinedError(
                    f"strategies.{self.spec.label}.budget_bytes: {self.spec.budget_bytes:,} "
                    f"bytes, but its KB alone takes {-left + self.spec.budget_bytes:,}"
                )
            self.reservoir = Reservoir(self.data, left, self.context.seed)
        return self.reservoir

    def rows(self, t: int) -> Batch:
        reservoir = self._reservoir(t)
        current = self.data.train([t], t)
        return current if reservoir is None else Batch.concat([current, reservoir.at(t)])

    def trainable(self, net: Model) -> Trainable:
        """With ``kd_weight`` (or a KB trust that compares with the previous period), the
        model also learns towards its own copy of t-1, as ``kd`` does."""
        needs_recent = self.context.adaptor.kb_trust in ("disagreement", "agreement")
        if self.spec.kd_weight > 0 or needs_recent:
            return Distilled(net, self.spec.kd_weight)  # net still equals the model of t-1
        return net

    def fresh(self, t: int) -> FinedModel:
        adaptor = self.context.adaptor
        return FinedModel(self.context.base_model(adaptor.tokens), self.kb(t), adaptor)

    def build(self, t: int, previous: dict[str, torch.Tensor], from_warmup: bool) -> Model:
        net = self.fresh(t)
        if from_warmup:  # the shared warm-up model has no knowledge tokens yet
            if self.spec.warmup_base:
                load_overlapping(net.base, previous)
        elif self.spec.warm:
            net.load_state_dict(previous)
        return net

    def knowledge_use(self, net: Model, t: int) -> KnowledgeUse:
        """How far the KB and each slot earned their place, how open the tokens were, and
        each slot's AUC on P_t's held-out rows."""
        assert isinstance(net, FinedModel)
        rows = self.data.holdout([t], t)
        scores = net.slot_scores(rows).float().numpy()
        labels = rows.label.numpy()
        return KnowledgeUse(
            kb_earned=float(net.kb_earned),
            slot_earned=[float(x) for x in net.slot_earned],
            token_share=net.token_share(rows),
            slot_auc=[auc(labels, scores[:, k]) for k in range(scores.shape[1])],
        )

    def bytes_kept(self, net: Model, t: int) -> int:
        assert isinstance(net, FinedModel)
        reservoir = self._reservoir(t)
        rows = reservoir.at(t).nbytes if reservoir is not None else 0
        return kb_bytes(net.kb) + rows  # the KB the model was trained with, and past rows


class FinedStreamingSpec(FinedSpec):
    absorb_epochs: int = Field(2, ge=1)  # epochs the KB spends on a period
    absorb_weight: float = Field(1.0, ge=0)  # pull towards the last snapshot


@register_strategy("fined_streaming")
class FinedStreaming(Fined):
    """As ``fined``; after each period the KB absorbs it (a few epochs on its rows,
    distilled towards its previous snapshot): a fixed size, no raw row kept."""

    spec: FinedStreamingSpec
    spec_class = FinedStreamingSpec

    def kb(self, t: int) -> KnowledgeBase:
        kb = self.context.knowledge_base(None)
        # The KB inside the model of t-1 has absorbed the periods through t-1.
        kb.set_known_through(max(t - 1, kb.known_through))
        return kb

    def after_period(self, net: Model, t: int) -> None:
        from fined.train.trainer import Trainer

        assert isinstance(net, FinedModel)
        kb = net.kb
        student = Distilled(kb, self.spec.absorb_weight)  # the teacher: a copy taken now
        kb.set_known_through(t)
        kb.requires_grad_(True)
        epochs = self.spec.absorb_epochs
        update = {"epochs": epochs, "patience": epochs, "select_after": 0,
                  "seed": self.context.step_seed(t), "progress": False}  # fmt: skip
        config = self.context.kb_train.model_copy(update=update)
        trainer = Trainer(student, config, device=self.context.device)
        trainer.fit(self.data.train([t], t), self.data.holdout([t], t))
        kb.requires_grad_(net.adaptor_config.finetune_lr is not None)
        kb.eval()


@register_strategy("fined_rebuild")
class FinedRebuild(Fined):
    """As ``fined``, the KB rebuilt from all the raw past periods each period (the reference
    for streaming: it keeps every past row)."""

    rebuilds_kb = True

    def kb(self, t: int) -> KnowledgeBase:
        return self.context.knowledge_base(t - 1)

    def build(self, t: int, previous: dict[str, torch.Tensor], from_warmup: bool) -> Model:
        if from_warmup:
            return super().build(t, previous, from_warmup)
        net = self.fresh(t)
        own = {k: v for k, v in previous.items() if not k.startswith("kb.")}
        net.load_state_dict({**net.state_dict(), **own})  # the new KB, the rest warm
        return net

    def bytes_kept(self, net: Model, t: int) -> int:
        return super().bytes_kept(net, t) + self.data.train(list(range(t)), t).nbytes
