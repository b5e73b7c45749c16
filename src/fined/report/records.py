"""What a ``fined run`` records of each cell, and what the report is made of.

A run's directory reads and writes these (``fined.protocol.run_directory``: each cell's
``record.json``, written last, marks it done); the tables read them. Their field names are
the keys of ``record.json``: a record written by an earlier version loads as it was.
"""

from __future__ import annotations

from typing import Any

from pydantic import SerializeAsAny, SerializerFunctionWrapHandler, model_serializer

from fined.config import StrictModel


class WarmupRecord(StrictModel):
    """The shared warm-up model of one (model, seed), trained on the KB's periods
    ``0..t``: every strategy's model of period t."""

    model: str
    seed: int
    t: int  # s - 1: the last period it trained on
    best_epoch: int
    valid_auc: float | None  # on the held-out slices of its periods (epoch selection)
    test_auc: float  # on P_{t+1}
    forgetting: dict[str, float]  # period i (as text) -> AUC on P_i's held-out slice
    weights_sha256: str  # of the cell's model.safetensors, checked whenever it is read


class KnowledgeUse(StrictModel):
    """What a model fed by a KB made of it at the end of a cell, on P_t's held-out rows:
    how far the KB and each slot had earned their place, how open the tokens were, and how
    well each slot's own click score ranks the clicks of now."""

    kb_earned: float
    slot_earned: list[float]
    token_share: float  # the tokens' mean norm over the fields' (0: the channel is shut)
    slot_auc: list[float]  # AUC of each slot's click score on P_t's held-out rows


class CellRecord(StrictModel):
    """One (strategy, model, seed, period t) cell: trained on the strategy's rows for t,
    tested on P_{t+1}, and row t of its forgetting matrix."""

    strategy: str  # the strategy's label
    kind: str
    model: str
    seed: int
    t: int
    period: str  # P_t's name
    test_period: str  # P_{t+1}'s name
    auc: float  # test metrics on P_{t+1}
    logloss: float
    gauc: float  # NaN without a user key
    valid_auc: float | None  # on P_t's held-out slice, of the epoch selected
    best_epoch: int
    epochs: int  # epochs trained
    train_rows: int
    train_seconds: float
    kb_seconds: float = 0.0  # KB builds (or absorbing) this cell waited for
    bytes_kept: int  # of the past: raw rows or a knowledge base
    forgetting: dict[str, float]  # period i (as text) -> AUC on P_i's held-out slice
    weights_sha256: str  # of the cell's model.safetensors, checked whenever it is read
    knowledge: KnowledgeUse | None = None  # a model fed by a KB: what it made of it

    @model_serializer(mode="wrap")
    def _leave_out_absent_knowledge(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A cell with no KB writes the keys records had before knowledge use was recorded,
        # so a record of an earlier version is written back as it was read.
        dumped = handler(self)
        if self.knowledge is None:
            dumped.pop("knowledge", None)
        return dumped


class DeployedCell(CellRecord):
    """A period of a strategy with a fallback: the record of the model deployed (its own,
    or its fallback's), under the strategy's label; what is kept, trained and built is
    counted for both chains. Never written: recomputed from the two chains' records."""

    deployed: str  # the label of the chain whose model is deployed
    candidate_auc: float  # what the strategy's own model scored


class RunResult(StrictModel):
    """Every record of a run: each strategy's chains (deployed, for one with a fallback)
    and the warm-up models, in the order of the config."""

    records: list[SerializeAsAny[CellRecord]]
    warmups: list[WarmupRecord]
    seconds: float  # the run's wall time in this process
