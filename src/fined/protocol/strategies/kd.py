"""``kd``: warm start, and a distillation term towards the model of t-1 (IncCTR-style)."""

from __future__ import annotations

from pydantic import Field

from fined.models.trainable import Trainable
from fined.protocol.distill import Distilled
from fined.protocol.strategies import Model, Strategy, StrategySpec, register_strategy


class KDSpec(StrategySpec):
    kd_weight: float = Field(0.5, ge=0)  # weight of the distillation term


@register_strategy("kd")
class KnowledgeDistillation(Strategy):
    """Warm start, plus a distillation term towards the model of t-1 (IncCTR-style)."""

    spec: KDSpec
    spec_class = KDSpec

    def trainable(self, net: Model) -> Trainable:
        return Distilled(net, self.spec.kd_weight)  # net still equals the model of t-1
