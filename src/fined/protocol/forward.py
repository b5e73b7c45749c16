"""Choosing by looking forward: does what was learned through t-1 score period t?

A weight of the past (a KB's pull, a teacher of t-1, a reservoir) helps where the next
period resembles the past, and the held-out slices of periods already trained on cannot say
whether it does: they reward remembering. The question a test asks is forward: how well does
the model of t-1 score P_t? Once P_t's labels are in (we train on them at t), that is known
without touching any later period: it is the AUC of the chain's model of t-1 on the whole of
P_t, which the protocol already computes as that model's test.

``forward_record``: those figures of one chain, by t. ``choose_forward``: each period, deploy
whichever of two chains (a strategy and its fallback) has the better mean forward AUC through
t. At the first period both chains start from the same warm-up model and no forward figure
tells them apart: the fallback is deployed (the past has not yet shown that it pays). The
held-out tail of the period trained on, which decided there before, rewards remembering: on
a real news log it deployed FINED's model at the first period in 2 of 3 seeds, which then
scored the next day 0.549 against the base model's 0.557. Neither chain feeds the other:
each goes on from its own model, so the choice never changes what either trains, and the
choice at t never reads P_t+1.
"""

from __future__ import annotations

from fined.report.records import CellRecord, DeployedCell


def forward_record(records: list[CellRecord]) -> dict[int, float]:
    """``{t: AUC of the chain's model of t-1 on P_t}`` for every t after the chain's first
    (the first starts from the shared warm-up model, the same for every chain)."""
    by_t = {r.t: r for r in records}
    return {t: by_t[t - 1].auc for t in sorted(by_t) if t - 1 in by_t}


def forward_score(records: list[CellRecord], t: int) -> float | None:
    """The record through period ``t`` of one chain: the mean of its forward AUCs up to t
    (None at its first period, where there is none)."""
    figures = [auc for u, auc in forward_record(records).items() if u <= t]
    return sum(figures) / len(figures) if figures else None


def choose_forward(own: list[CellRecord], fallback: list[CellRecord]) -> list[CellRecord]:
    """``own``'s records, each period replaced by the fallback's model where the fallback's
    forward score through that period is higher (a tie keeps the fallback: the past has not
    shown that it pays). What is kept, trained and built is counted for both."""
    chosen: list[CellRecord] = []
    base = {r.t: r for r in fallback}
    for mine in sorted(own, key=lambda r: r.t):
        t = mine.t
        other = base[t]
        mine_score, other_score = forward_score(own, t), forward_score(fallback, t)
        keep = mine_score is not None and other_score is not None and mine_score > other_score
        deployed = mine if keep else other
        own_part = {
            "strategy": mine.strategy,
            "kind": mine.kind,
            "deployed": deployed.strategy,
            "candidate_auc": mine.auc,  # what the strategy alone scored
            "train_rows": mine.train_rows + other.train_rows,
            "train_seconds": mine.train_seconds + other.train_seconds,
            "kb_seconds": mine.kb_seconds,
            "bytes_kept": mine.bytes_kept + other.bytes_kept,
        }
        chosen.append(DeployedCell.model_validate(deployed.model_dump() | own_part))
    return chosen
