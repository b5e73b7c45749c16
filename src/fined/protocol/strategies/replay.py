"""``replay``: the current period plus a reservoir sample of past rows, within a byte budget
(by default the size of the knowledge base)."""

from __future__ import annotations

from pydantic import Field

from fined.data.batch import Batch
from fined.protocol.data import ProtocolData
from fined.protocol.strategies import (
    Model,
    Strategy,
    StrategyContext,
    StrategySpec,
    register_strategy,
)


class ReplaySpec(StrategySpec):
    budget_bytes: int | None = Field(None, ge=1)  # None: the size of the run's default KB


class Reservoir:
    """A reservoir of past rows within a byte budget, drawn once per period (for training,
    then sized): a uniform sample of the rows before t, as a stream sample would hold it."""

    def __init__(self, data: ProtocolData, budget: int, seed: int) -> None:
        self.data, self.budget, self.seed = data, budget, seed
        self._kept: tuple[int, Batch] | None = None

    def at(self, t: int) -> Batch:
        if self._kept is None or self._kept[0] != t:
            one = self.data.train([t], t)
            row_bytes = one.nbytes / max(len(one), 1)
            rows = int(self.budget // row_bytes)
            self._kept = (t, self.data.reservoir(list(range(t)), t, rows, self.seed))
        return self._kept[1]


@register_strategy("replay")
class Replay(Strategy):
    """Warm start; the current period plus a reservoir sample of past rows."""

    spec: ReplaySpec
    spec_class = ReplaySpec

    def __init__(self, spec: StrategySpec, context: StrategyContext) -> None:
        super().__init__(spec, context)
        budget = self.spec.budget_bytes or context.default_kb_bytes
        self.reservoir = Reservoir(self.data, budget, context.seed)

    def rows(self, t: int) -> Batch:
        return Batch.concat([self.data.train([t], t), self.reservoir.at(t)])

    def bytes_kept(self, net: Model, t: int) -> int:
        return self.reservoir.at(t).nbytes
