"""``window`` and ``full``: retrain (from scratch by default) on the last w periods, or on
all of them (the storage-hungry upper reference)."""

from __future__ import annotations

from pydantic import Field

from fined.protocol.strategies import Model, Strategy, StrategySpec, register_strategy


class WindowSpec(StrategySpec):
    window: int = Field(2, ge=1)  # periods trained on, the current one included


@register_strategy("window")
class Window(Strategy):
    """``window``: train on the last w periods (retrained from scratch by default)."""

    spec: WindowSpec
    spec_class = WindowSpec
    warm_by_default = False

    def periods(self, t: int) -> list[int]:
        return list(range(max(0, t - self.spec.window + 1), t + 1))

    def bytes_kept(self, net: Model, t: int) -> int:
        past = self.periods(t)[:-1]
        return self.data.train(past, t).nbytes if past else 0


@register_strategy("full")
class Full(Window):
    """``full``: train on every period so far."""

    spec_class = StrategySpec  # type: ignore[assignment]  # no window: every period

    def periods(self, t: int) -> list[int]:
        return list(range(t + 1))
