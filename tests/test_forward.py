"""Choosing by looking forward (``fined.protocol.forward``): each period, deploy the chain
whose models have scored the periods after them better; never read the period a choice is
tested on."""

from __future__ import annotations

import pytest

from fined.protocol.forward import choose_forward, forward_record, forward_score
from fined.report.records import CellRecord, DeployedCell


def chain(label: str, valid: list[float], test: list[float], first: int = 1) -> list[CellRecord]:
    """Records of one chain: at t, the held-out AUC of P_t and the test AUC on P_t+1."""
    return [
        CellRecord(
            strategy=label,
            kind=label,
            model="deepfm",
            seed=1,
            t=first + i,
            period=f"p{first + i}",
            test_period=f"p{first + i + 1}",
            auc=a,
            logloss=0.5,
            gauc=a,
            valid_auc=v,
            best_epoch=0,
            epochs=1,
            train_rows=10,
            train_seconds=1.0,
            kb_seconds=0.5 if label == "fined" else 0.0,
            bytes_kept=100 if label == "fined" else 0,
            forgetting={},
            weights_sha256=label,
        )  # fmt: skip
        for i, (v, a) in enumerate(zip(valid, test, strict=True))
    ]


def deployed(chosen: list[CellRecord]) -> list[DeployedCell]:
    assert all(isinstance(r, DeployedCell) for r in chosen)
    return [r for r in chosen if isinstance(r, DeployedCell)]


def test_the_forward_record_is_each_model_of_t_minus_1_on_the_period_t() -> None:
    records = chain("fined", [0.8, 0.8, 0.8], [0.61, 0.62, 0.63])
    assert forward_record(records) == {2: 0.61, 3: 0.62}
    # At the first step no forward figure exists (the held-out tail of the period trained on
    # rewards remembering: it is not one).
    assert forward_score(records, 1) is None
    assert forward_score(records, 3) == pytest.approx((0.61 + 0.62) / 2)


def test_each_period_deploys_the_chain_that_looked_forward_better() -> None:
    # The strategy wins on its held-out tails (it remembers) but its models score the next
    # period worse: after the first step the fallback is deployed.
    own = chain("fined", [0.80, 0.80, 0.80], [0.60, 0.60, 0.60])
    base = chain("incremental", [0.79, 0.79, 0.79], [0.65, 0.65, 0.65])
    chosen = deployed(choose_forward(own, base))
    assert [r.deployed for r in chosen] == ["incremental", "incremental", "incremental"]
    assert [r.auc for r in chosen] == [0.65, 0.65, 0.65]
    assert [r.candidate_auc for r in chosen] == [0.60, 0.60, 0.60]
    assert all(r.strategy == "fined" and r.kind == "fined" for r in chosen)
    # The deployed model's own record: its weights are the ones deployed.
    assert [r.weights_sha256 for r in chosen] == ["incremental", "incremental", "incremental"]
    # What both chains cost and keep is counted: two models trained, the KB kept.
    assert chosen[1].train_seconds == 2.0 and chosen[1].train_rows == 20
    assert chosen[1].bytes_kept == 100 and chosen[1].kb_seconds == 0.5


def test_where_the_past_pays_the_strategy_is_deployed_and_a_tie_keeps_the_fallback() -> None:
    # Held-out tails play no part, whichever they favour: at the first period, before any
    # forward figure, the fallback is deployed, then the forward figures decide.
    own = chain("fined", [0.90, 0.70, 0.70], [0.70, 0.70, 0.70])
    base = chain("incremental", [0.80, 0.79, 0.79], [0.65, 0.65, 0.65])
    chosen = deployed(choose_forward(own, base))
    assert [r.deployed for r in chosen] == ["incremental", "fined", "fined"]
    tie = deployed(choose_forward(own, chain("incremental", [0.8] * 3, [0.70, 0.70, 0.70])))
    assert [r.deployed for r in tie] == ["incremental"] * 3


def test_the_choice_at_t_never_reads_what_it_is_tested_on() -> None:
    """The test of period t (on P_t+1) changes nothing of what is deployed at t."""
    own = chain("fined", [0.80, 0.80, 0.80], [0.60, 0.70, 0.60])
    base = chain("incremental", [0.79, 0.79, 0.79], [0.65, 0.65, 0.65])
    before = [r.deployed for r in deployed(choose_forward(own, base))]
    for t in range(3):
        flipped = [r.model_copy() for r in own]
        flipped[t] = flipped[t].model_copy(update={"auc": 1 - flipped[t].auc})
        after = [r.deployed for r in deployed(choose_forward(flipped, base))]
        assert after[: t + 1] == before[: t + 1], t
