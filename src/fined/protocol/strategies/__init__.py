"""Strategies against forgetting: what each trains on at period t, how its model starts, and
what it keeps of the past.

Every strategy sees the same periods, models and seeds. At period t it builds its model
(warm-started from its own model of t-1, or from the shared warm-up model trained on the KB's
periods when t is the first step), picks its training rows, may wrap the model for training
(``kd``), and reports the bytes of the past it keeps. Selection is always on P_t's held-out
slice and happens in the runner, the same for all.

A strategy is a class registered under its ``kind`` with the spec of its settings (a key that
does not belong to the kind is an error naming it) and whether it uses a knowledge base; it
sees the run only through a narrow ``StrategyContext``. A new strategy is one module here,
named in ``STRATEGIES`` below (or registered from anywhere with ``register_strategy``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import model_validator

from fined.config import StrictModel
from fined.data.batch import Batch
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.ctr_model import CTRModel
from fined.models.scoring import ScoringModel
from fined.models.trainable import Trainable
from fined.protocol.data import ProtocolData
from fined.registry import Registry
from fined.report.records import KnowledgeUse
from fined.train.config import KBTrainConfig

Model = ScoringModel[Any]  # what a strategy trains and keeps


def step_seed(seed: int, period: int) -> int:
    """The seed of every random draw of one (seed, period) cell: derived from the two, never
    from how far a previous process got (so a resumed run draws alike)."""
    return seed * 1000 + period


class StrategySpec(StrictModel):
    """Settings every strategy has; a kind's spec adds its own. ``label`` tells variants of a
    kind apart (ablations, a K sweep) and names their directories."""

    kind: str
    label: str = ""  # default: the kind
    warm_start: bool | None = None  # None: the kind's default
    family: str = ""  # its line in the AUC-vs-bytes figure (default: the kind)
    # A strategy kind trained beside this one (its default settings) and deployed instead in
    # each period where its forward record is the better one (``fined.protocol.forward``);
    # None: this chain alone.
    fallback: str | None = None

    @model_validator(mode="after")
    def _default_label(self) -> StrategySpec:
        self.label = self.label or self.kind
        self.family = self.family or self.kind
        return self

    @property
    def strategy(self) -> type[Strategy]:
        return STRATEGIES.get(self.kind)

    @property
    def uses_kb(self) -> bool:
        return self.strategy.uses_kb

    @property
    def warm(self) -> bool:
        return self.warm_start if self.warm_start is not None else self.strategy.warm_by_default

    def kb_overrides(self) -> dict[str, Any]:
        """This variant's KB settings, put on top of the run's ``kb`` (none by default)."""
        return {}

    def adaptor_overrides(self) -> dict[str, Any]:
        """This variant's adaptor settings, put on top of the run's ``adaptor`` (none by
        default)."""
        return {}


@dataclass
class StrategyContext:
    """What a strategy may use of its run: the data, fresh base models, its knowledge base
    and the settings that concern it, already resolved."""

    data: ProtocolData
    model: str
    seed: int
    base_model: Callable[[int], CTRModel]  # knowledge tokens -> a fresh base model
    knowledge_base: Callable[[int | None], KnowledgeBase]  # through (None: the first s) -> KB
    adaptor: AdaptorConfig  # the run's adaptor settings with the strategy's own on top
    kb_train: KBTrainConfig  # how the run trains knowledge bases
    default_kb_bytes: int  # the size of a KB of the run's default settings
    device: torch.device  # where the run computes

    def step_seed(self, t: int) -> int:
        return step_seed(self.seed, t)


class Strategy:
    """The base behaviour, which is ``incremental``'s: warm start, train on the current
    period only (the forgetting baseline)."""

    kind: ClassVar[str] = ""
    spec_class: ClassVar[type[StrategySpec]] = StrategySpec
    uses_kb: ClassVar[bool] = False
    rebuilds_kb: ClassVar[bool] = False  # builds a KB of the periods before each t
    warm_by_default: ClassVar[bool] = True

    def __init__(self, spec: StrategySpec, context: StrategyContext) -> None:
        self.spec, self.context = spec, context
        self.data = context.data

    def fresh(self, t: int) -> Model:
        return self.context.base_model(0)

    def build(self, t: int, previous: dict[str, torch.Tensor], from_warmup: bool) -> Model:
        net = self.fresh(t)
        if self.spec.warm:
            net.load_state_dict(previous)
        return net

    def periods(self, t: int) -> list[int]:
        return [t]

    def rows(self, t: int) -> Batch:
        return self.data.train(self.periods(t), t)

    def trainable(self, net: Model) -> Trainable:
        """What the trainer fits at period t (``net`` itself, or a wrapper around it)."""
        return net

    def bytes_kept(self, net: Model, t: int) -> int:
        return 0

    def after_period(self, net: Model, t: int) -> None:
        pass

    def knowledge_use(self, net: Model, t: int) -> KnowledgeUse | None:
        """What the model of t made of a KB, for its record (None: it has none)."""
        return None


STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy", "fined.protocol.strategies", ("incremental", "window", "replay", "kd", "fined")
)


def register_strategy(kind: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.kind = kind
        return STRATEGIES.register(kind)(cls)

    return wrap


def parse_strategy(entry: Any) -> StrategySpec:
    """A strategy entry of a run config (a kind's name, or a mapping with ``kind``) as its
    kind's spec; raises pydantic's ValidationError for a bad key or value, FinedError for an
    unknown kind."""
    doc = {"kind": entry} if isinstance(entry, str) else entry
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise ValueError("a strategy is a kind's name, or a mapping with `kind`")
    return STRATEGIES.get(doc["kind"]).spec_class.model_validate(doc)
