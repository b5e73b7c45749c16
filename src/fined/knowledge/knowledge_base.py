"""The parametric knowledge base: extractor + encoder + a task head, trained on the past.

Stage 1 (``fined kb build``) trains it on past periods with
``L_kb = BCE + beta_ib * mean_k KL(q(v_k) || N(0, I)) + lambda_dis * MI(v_k, v_k') +
lambda_l0 * E[L0]``: the BCE head and the KL are the two sides of the information bottleneck
(keep what predicts the click, squeeze out the rest), the L0 term keeps patterns short and
sparse, and the MI term makes different slots store different things. Each term can be
switched off (that is how the ablations run).

To the trainer it is a model like any other (``fined.models.trainable``): its head gives
click logits, its own loss adds the bottleneck, L0 and disentanglement terms, and it
declares the CLUB estimator's q-network as an auxiliary group, which the trainer steps on the
step's detached vectors.

Stage 2 freezes it: ``query(batch) -> (V [B, K, d], gates [B, F, K])`` gives every instance
its knowledge vectors, by the fast inference path of its modules (``frozen_*``); ids the KB
never saw (indices beyond its vocabularies) are mapped to OOV first, so they too get
knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from fined.config import StrictModel
from fined.data.batch import Batch, RowKnowledge
from fined.data.feature_map import FeatureMap
from fined.knowledge.encoder import KnowledgeEncoder
from fined.knowledge.extractor import KnowledgeExtractor
from fined.knowledge.regularizers import SlotMI, gaussian_kl
from fined.models.layers import MLP
from fined.models.trainable import AuxiliaryGroup, Forward, OwnLoss, Trainable


class KBConfig(StrictModel):
    """Knowledge-base settings (``kb:`` in a config, ``--set`` on the command line)."""

    slots: int = Field(12, ge=1)  # K pattern slots / knowledge vectors
    dim: int = Field(16, ge=2)  # d_kb
    attention_layers: int = Field(1, ge=1, le=4)
    heads: int = Field(2, ge=1)
    encoder_hidden: list[int] = Field(default_factory=lambda: [64], min_length=1)
    head_hidden: list[int] = Field(default_factory=lambda: [64])
    essential: bool = True  # information bottleneck (KL + stochastic v)
    beta_ib: float = Field(1e-3, ge=0)
    disentangled: bool = True
    lambda_dis: float = Field(0.05, ge=0)
    mi_estimator: Literal["club", "hsic"] = "club"
    mi_pairs: int = Field(6, ge=1)
    hsic_rows: int = Field(256, ge=8)
    # Rows of each training batch the MI estimate (and CLUB's own step) reads: its first
    # ones (batches are shuffled), 0 for all. 256 takes the estimator's share of a KB step
    # from ~27 % to ~8 %, but with it (and patience 2) FINED's forward AUC in the paper's
    # protocol fell from 0.6935 to 0.6911 (DeepFM, 3 seeds): all rows by default
    mi_rows: int = Field(0, ge=0)
    club_lr: float = Field(1e-3, gt=0)
    sparse: bool = True  # the L0 penalty on the gates
    lambda_l0: float = Field(0.05, ge=0)
    gate_init: float = 2.0  # initial gate logit: patterns start open, L0 then closes them
    l0_warmup_steps: int = Field(150, ge=0)  # the L0 weight ramps up linearly over these steps
    dense_gates: bool = False  # ablation: every field in every pattern, no gates
    # How the KB's weights are stored (and so what keeping it costs): fp32; fp16 (half the
    # bytes); int8 (a quarter, each row of a matrix scaled to [-127, 127]). The KB is used
    # as stored: a build ends by rounding its weights through this precision.
    storage: Literal["fp32", "fp16", "int8"] = "fp32"


@dataclass(frozen=True)
class Knowledge:
    """What the KB computes for a batch (``KnowledgeBase.encode``)."""

    fields: torch.Tensor  # [B, F, d] its own field vectors
    log_alpha: torch.Tensor  # [B, F, K] the gates' logits
    z: torch.Tensor  # [B, F, K] the gates
    v: torch.Tensor  # [B, K, d] the knowledge vectors (sampled in training, else mu)
    mu: torch.Tensor  # [B, K, d] their means
    logvar: torch.Tensor  # [B, K, d] their log-variances


@dataclass(frozen=True, kw_only=True)
class KBForward(Forward):
    """A KB's training pass: its knowledge besides the logits (``latent``: the means)."""

    knowledge: Knowledge


class KnowledgeBase(Trainable[KBForward]):
    """Extractor + encoder + head. ``forward`` gives the stage-1 click logits ``[B]``."""

    steps: torch.Tensor  # a buffer: training steps seen
    id_limits: torch.Tensor  # a buffer: the id limit of each id field (ids the KB knows)

    def __init__(self, feature_map: FeatureMap, config: KBConfig, known_through: int) -> None:
        super().__init__()
        c = config
        if c.dim % c.heads:
            raise ValueError(f"kb dim {c.dim} must be divisible by heads {c.heads}")
        self.feature_map, self.config, self.known_through = feature_map, c, known_through
        self.extractor = KnowledgeExtractor(
            feature_map, c.dim, c.slots, c.attention_layers, c.heads, c.dense_gates, c.gate_init
        )
        self.encoder = KnowledgeEncoder(c.dim, c.slots, c.encoder_hidden, stochastic=c.essential)
        # Additive over slots (one shared scorer per knowledge vector, scores summed): each
        # slot must carry a piece of evidence on its own, which pushes different patterns
        # into different slots instead of one slot holding every field.
        self.head = MLP(c.dim, c.head_hidden, out=1)
        self.mi = (
            SlotMI(c.mi_estimator, c.slots, c.dim, c.mi_pairs, c.hsic_rows, c.mi_rows)
            if c.disentangled and c.slots > 1
            else None
        )
        # Training steps seen (a buffer, so that a resumed build ramps the L0 weight alike).
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        ids, sequences = feature_map.known_limits(known_through)
        self.register_buffer("id_limits", torch.tensor(ids, dtype=torch.long))
        self.seq_limits = sequences

    # -- ids the KB never saw --------------------------------------------------------------
    def set_known_through(self, period: int) -> None:
        """Treat the ids of periods up to ``period`` as known (a KB that absorbed them)."""
        self.known_through = period
        ids, self.seq_limits = self.feature_map.known_limits(period)
        self.id_limits.copy_(torch.tensor(ids, dtype=torch.long))

    def _known(self, batch: Batch) -> Batch:
        return batch.forget_later_ids(self.id_limits, self.seq_limits)

    # -- the knowledge ---------------------------------------------------------------------
    def encode(self, batch: Batch) -> Knowledge:
        """Field vectors, gates and knowledge ``v, mu, logvar`` (``[B, K, d]``) of a batch."""
        fields, log_alpha, z = self.extractor(self._known(batch))
        v, mu, logvar = self.encoder(fields, z)
        return Knowledge(fields=fields, log_alpha=log_alpha, z=z, v=v, mu=mu, logvar=logvar)

    @torch.no_grad()
    def query(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen use: ``(V [B, K, d], gates [B, F, K])`` (deterministic: mu, eval gates),
        the evaluation-mode function of ``encode`` computed by the modules' in-place paths
        (layer norms folded into the products that follow them, one buffer per stage): on 2
        CPU cores and on an H200 (9.2 against 11.8 ms for 65,536 rows, fp32) the faster one.
        Under autocast the modules' own kernels compute it, in bf16."""
        device = batch.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            out = self.encode(batch)  # the KB is in evaluation mode here: v = mu, fixed gates
            return out.mu, out.z
        fields = self.extractor.embedding(self._known(batch))
        z = self.extractor.frozen_gates(fields)
        return self.encoder.frozen_means(fields, z), z

    @torch.no_grad()
    def knowledge_of(self, batch: Batch) -> RowKnowledge:
        """The frozen KB's knowledge of each row, as a fit computes it once for its rows
        (``Trainable.row_knowledge``): ``v`` (``query``) and each slot's click logit."""
        v = self.query(batch)[0]
        return RowKnowledge(v, self.slot_logits(v))

    def slot_logits(self, v: torch.Tensor) -> torch.Tensor:
        """Each slot's share ``[B, K]`` of the KB's click logit, from ``v [B, K, d]``: the
        head scores every knowledge vector alone and the logit is their sum."""
        return self.head(v).squeeze(-1)

    def click_logits(self, v: torch.Tensor) -> torch.Tensor:
        """The KB's own click logits ``[B]`` from knowledge vectors ``[B, K, d]``."""
        return self.slot_logits(v).sum(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.click_logits(self.encode(batch).v)

    # -- stage 1: the trainer's contract -----------------------------------------------------
    def forward_train(self, batch: Batch) -> KBForward:
        k = self.encode(batch)
        return KBForward(logits=self.click_logits(k.v), fields=k.fields, latent=k.mu, knowledge=k)

    def auxiliary_step(self, out: KBForward) -> None:
        """Count the step (the L0 ramp reads it); the trainer then trains the MI estimator's
        network (``auxiliary_groups``), before the KB's own loss."""
        self.steps += 1

    def own_loss(self, batch: Batch, out: KBForward) -> OwnLoss:
        c, k = self.config, out.knowledge
        total = out.logits.new_zeros(())
        bce = F.binary_cross_entropy_with_logits(out.logits.detach(), batch.label)
        terms = {"bce": bce}
        if c.essential and c.beta_ib > 0:
            kl = gaussian_kl(k.mu, k.logvar).mean()
            total = total + c.beta_ib * kl
            terms["kl"] = kl.detach()
        if c.sparse and c.lambda_l0 > 0 and not c.dense_gates:
            l0 = self.extractor.gate.expected_l0(k.log_alpha).mean()
            # Gates that close before the task has shaped the embeddings never reopen (a
            # closed gate gets no task gradient): the penalty ramps up instead.
            # (in float64 on the device, as Python floats would be, without a sync)
            if c.l0_warmup_steps:
                ramp = (self.steps.double() / c.l0_warmup_steps).clamp(max=1.0)
            else:
                ramp = torch.ones((), dtype=torch.float64, device=l0.device)
            total = total + (c.lambda_l0 * ramp).to(l0.dtype) * l0
            terms["l0"] = l0.detach()
        if self.mi is not None and c.lambda_dis > 0:
            mi = self.mi(k.v)
            total = total + c.lambda_dis * mi
            terms["mi"] = mi.detach()
        return OwnLoss(total, terms)

    def parameter_groups(self) -> list[dict]:
        """Everything but the MI estimator's own network, which is trained apart."""
        own = {id(p) for p in self.mi.parameters()} if self.mi is not None else set()
        return [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in own]}]

    def auxiliary_groups(self) -> list[AuxiliaryGroup[KBForward]]:
        """The MI estimator's network (CLUB's q-network) learns in alternation with the KB:
        one step on the step's detached knowledge vectors, before the KB's own loss."""
        mi = self.mi
        if mi is None or self.config.lambda_dis <= 0:
            return []
        code = list(mi.slot_code.parameters()) if mi.slot_code is not None else []
        params = list(mi.estimator.parameters()) + code
        if not params:  # an estimator without a network (HSIC)
            return []

        def loss(out: KBForward) -> torch.Tensor:
            return mi.learning_loss(out.knowledge.v.detach())

        return [AuxiliaryGroup("mi", params, self.config.club_lr, loss)]
