"""A ``fined run`` config: the data, the models, the seeds and the strategies to compare.

Every section is typed; a bad key or value names its path. ``quick:`` holds overrides that
``--quick`` merges on top (fewer seeds, fewer epochs), so one file describes both runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fined.config import StrictModel, load_yaml, merge, parse_model
from fined.data.schema import PrepareConfig
from fined.errors import FinedError
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.knowledge_base import KBConfig

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # names that are safe as one path component
Kind = Literal[
    "incremental", "window", "full", "replay", "kd", "fined", "fined_streaming", "fined_rebuild"
]


class StrategySpec(StrictModel):
    """One strategy; ``label`` tells apart variants of a kind (ablations, a K sweep)."""

    kind: Kind
    label: str = ""  # default: the kind
    warm_start: bool | None = None  # None: the kind's default (window and full retrain)
    window: int = Field(2, ge=1)  # window: periods trained on, the current one included
    budget_bytes: int | None = Field(None, ge=1)  # replay: None = the KB's size
    kd_weight: float = Field(0.5, ge=0)  # kd: weight of the distillation term
    kb: dict[str, Any] = Field(default_factory=dict)  # fined*: KB settings for this variant
    # fined*: fine-tune the KB at this rate (None: the run's adaptor setting, frozen by default)
    finetune_lr: float | None = Field(None, gt=0)
    adaptor: dict[str, Any] = Field(default_factory=dict)  # fined*: adaptor settings
    # fined*: start the base model from the shared warm-up model (False: from scratch at the
    # first period, so that all it knows of the KB's periods comes through the KB)
    warmup_base: bool = True
    # fined*: weight of the distillation towards the KB's own predictions (None: the run's
    # adaptor setting, 0.2 by default; 0: tokens alone)
    kb_distill: float | None = Field(None, ge=0)
    absorb_epochs: int = Field(2, ge=1)  # fined_streaming: epochs the KB spends on a period
    absorb_weight: float = Field(1.0, ge=0)  # fined_streaming: pull towards the last snapshot

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _default_label(self) -> StrategySpec:
        self.label = self.label or self.kind
        return self

    @field_validator("label")
    @classmethod
    def _a_name(cls, label: str) -> str:
        # Labels name directories of the run: a path ("../x", "/tmp/x") would write outside it.
        if label and not NAME.fullmatch(label):
            raise ValueError(
                f"{label!r} is not a name: use letters, digits and _ - . + (starting with a "
                "letter or digit), not a path"
            )
        return label

    @property
    def uses_kb(self) -> bool:
        return self.kind.startswith("fined")

    @property
    def warm(self) -> bool:
        return (
            self.warm_start if self.warm_start is not None else self.kind not in ("window", "full")
        )


class DataSpec(StrictModel):
    """Either an already prepared directory, or a prepare job run into ``<run>/data``."""

    prepared: str | None = None
    prepare: PrepareConfig | None = None

    @model_validator(mode="after")
    def _one(self) -> DataSpec:
        if (self.prepared is None) == (self.prepare is None):
            raise ValueError("give exactly one of `prepared` (a directory) or `prepare` (a job)")
        return self


class RunConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # default run directory name
    data: DataSpec
    kb_periods: int = Field(ge=1)  # s: the KB (and every model's warm-up) learn P0..P(s-1)
    last_period: str | int | None = None  # use the periods up to this one (None: all)
    models: list[str] = Field(min_length=1)
    model_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    strategies: list[StrategySpec] = Field(min_length=1)
    baseline: str = "incremental"  # RelaImpr is measured against this strategy's label
    train: dict[str, Any] = Field(default_factory=dict)  # trainer settings for every model
    kb: dict[str, Any] = Field(default_factory=dict)  # KB settings shared by every KB
    kb_train: dict[str, Any] = Field(default_factory=dict)  # trainer settings for KB builds
    adaptor: AdaptorConfig = Field(default_factory=AdaptorConfig)
    quick: dict[str, Any] = Field(default_factory=dict)  # overrides applied by --quick

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        from fined.models import model_names

        unknown = [m for m in models if m not in model_names()]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {model_names()}")
        return models

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        labels = [s.label for s in self.strategies]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"strategy labels must be unique, repeated: {dupes}")
        if self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not one of the strategies {labels}")
        self._known_models(list(self.model_settings))
        return self

    # Typed views of the free-form sections (validated once, at load time).
    def train_config(self, **override: Any):
        from fined.train.config import TrainConfig

        return parse_model(TrainConfig, {**self.train, **override}, "train")

    def kb_train_config(self, **override: Any):
        from fined.train.config import KBTrainConfig

        return parse_model(KBTrainConfig, {**self.kb_train, **override}, "kb_train")

    def adaptor_config(self, spec: StrategySpec) -> AdaptorConfig:
        # A strategy's own finetune_lr / kb_distill, where set, override the run's adaptor.
        own = {
            k: getattr(spec, k)
            for k in ("finetune_lr", "kb_distill")
            if getattr(spec, k) is not None
        }
        update = {**spec.adaptor, **own}
        return parse_model(
            AdaptorConfig, {**self.adaptor.model_dump(), **update}, f"strategies.{spec.label}"
        )

    def kb_config(self, spec: StrategySpec) -> KBConfig:
        return parse_model(KBConfig, {**self.kb, **spec.kb}, f"strategies.{spec.label}.kb")


def load_run_config(
    path: str | Path, quick: bool = False, sets: dict[str, Any] | None = None
) -> RunConfig:
    """Read and validate a run config; ``sets`` are dotted ``key=value`` overrides."""
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise FinedError(f"{path}: expected a mapping at the top level")
    if quick:
        doc = merge(doc, doc.get("quick") or {})
    for key, value in (sets or {}).items():
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        doc = merge(doc, nested)
    config = parse_model(RunConfig, doc, str(path))
    for spec in config.strategies:  # every KB variant must validate before hours of training
        config.kb_config(spec)
        config.adaptor_config(spec)
    config.train_config()
    config.kb_train_config()
    return config
