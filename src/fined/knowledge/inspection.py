"""What a knowledge base learned: the field patterns each slot picks, their order and
sparsity, how much the slots share (MI), and how well planted patterns are recovered."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from fined.data.batch import Batch
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.knowledge.regularizers import gaussian_mi


@dataclass
class SlotReport:
    slot: int
    top: list[tuple[tuple[str, ...], float]]  # (field combination, share of instances)
    mean_order: float
    open_share: float  # mean gate value
    field_share: list[float]  # per field: share of instances whose gate is open


@dataclass
class Inspection:
    fields: list[str]
    slots: list[SlotReport]
    expected_l0: float
    binary_share: float  # share of evaluation gates exactly 0 or 1
    mi: list[list[float]] = field(default_factory=list)  # Gaussian MI between slots (nats)


def field_names(kb: KnowledgeBase) -> list[str]:
    fmap = kb.feature_map
    names = [f.name for f in fmap.id_features] + [f.name for f in fmap.float_features]
    return names + list(kb.extractor.embedding.pooled)


@torch.no_grad()
def inspect_kb(kb: KnowledgeBase, data: Batch, top: int = 5) -> Inspection:
    kb.eval()
    out = kb.encode(data)  # computed where the KB is
    z, names = out.z.cpu(), field_names(kb)
    open_ = z > 0.5  # [N, F, K]
    slots = []
    for k in range(z.shape[2]):
        combos = Counter(
            tuple(names[i] for i in row.nonzero().flatten().tolist()) for row in open_[:, :, k]
        )
        n = z.shape[0]
        slots.append(
            SlotReport(
                slot=k,
                top=[(c, cnt / n) for c, cnt in combos.most_common(top)],
                mean_order=float(open_[:, :, k].sum(1).float().mean()),
                open_share=float(z[:, :, k].mean()),
                field_share=open_[:, :, k].float().mean(0).tolist(),
            )
        )
    l0 = float(kb.extractor.gate.expected_l0(out.log_alpha.cpu()).mean())
    binary = float(((z == 0) | (z == 1)).float().mean())
    mu = out.mu.cpu()
    mi = [
        [gaussian_mi(mu[:, a], mu[:, b]) if a != b else float("nan") for b in range(mu.shape[1])]
        for a in range(mu.shape[1])
    ]
    return Inspection(names, slots, l0, binary, mi)


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def typical_pattern(slot: SlotReport, names: list[str]) -> set[str]:
    """The fields a slot's gate opens for at least half of the instances."""
    return {n for n, share in zip(names, slot.field_share, strict=True) if share >= 0.5}


def recovery(
    inspection: Inspection, planted: list[list[str]]
) -> list[tuple[list[str], int, float]]:
    """For each planted field set: the slot whose typical pattern matches it best, and that
    Jaccard similarity."""
    out = []
    for fields in planted:
        scored = [
            (s.slot, jaccard(set(fields), typical_pattern(s, inspection.fields)))
            for s in inspection.slots
        ]
        out.append((fields, *max(scored, key=lambda t: t[1])))
    return out
