"""A ``fined run`` config: the data, the models, the seeds and the strategies to compare.

One typed tree, validated whole when the file is loaded, before any data work: the trainer
(``train: TrainConfig``), every model's settings (each by its own config class), the KB
(``kb: KBConfig``, ``kb_train: KBTrainConfig``), the adaptor, and each strategy by its kind's
spec (a key that does not belong to a kind, or a misspelt model setting, is an error that
names it). Settings resolve in one order (``fined.config.resolve``): the classes' defaults <
the file < its ``quick:`` overrides (with ``--quick``) < ``--set key=value``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from fined.config import (
    StrictModel,
    key_error,
    load_yaml,
    merge,
    nested,
    nested_error,
    parse_model,
    resolve,
)
from fined.data.schema import PrepareConfig
from fined.errors import FinedError
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.knowledge_base import KBConfig
from fined.models.ctr_model import ModelConfig, model_class, model_names
from fined.protocol.strategies import StrategySpec, parse_strategy
from fined.train.config import KBTrainConfig, TrainConfig

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # names that are safe as one path component
# Joins a strategy's label and its fallback's kind in the label of a fallback chain of its
# own (``fined@incremental``): a character NAME refuses, so that no label a user gives can
# name (and so stand in for) a chain the run adds.
FALLBACK_JOIN = "@"


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
    # Per model, its config (the model's defaults with this section on top).
    model_settings: dict[str, SerializeAsAny[ModelConfig]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    strategies: list[SerializeAsAny[StrategySpec]] = Field(min_length=1)
    baseline: str = "incremental"  # RelaImpr is measured against this strategy's label
    train: TrainConfig = Field(default_factory=TrainConfig)  # for every model
    kb: KBConfig = Field(default_factory=KBConfig)  # shared by every KB (a variant adds its own)
    kb_train: KBTrainConfig = Field(default_factory=KBTrainConfig)  # for KB builds
    adaptor: AdaptorConfig = Field(default_factory=AdaptorConfig)
    quick: dict[str, Any] = Field(default_factory=dict)  # overrides applied by --quick
    # Where to compute (auto: a GPU if there is one); not part of the run's identity: a run
    # may be resumed elsewhere (float sums differ by device, as by thread count)
    device: str = "auto"

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        unknown = [m for m in models if m not in model_names()]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {model_names()}")
        return models

    @field_validator("model_settings", mode="before")
    @classmethod
    def _typed_models(cls, value: Any) -> Any:
        """Each model's section by its own config class (a misspelt key is named)."""
        if not isinstance(value, dict):
            return value
        out = {}
        for name, settings in value.items():
            if name not in model_names():
                raise key_error(name, f"unknown model; choose from {', '.join(model_names())}")
            if isinstance(settings, ModelConfig):
                out[name] = settings
                continue
            try:
                out[name] = model_class(name).config_class.model_validate(settings or {})
            except ValidationError as err:
                raise nested_error(err, name) from None
        return out

    @field_validator("strategies", mode="before")
    @classmethod
    def _typed_strategies(cls, value: Any) -> Any:
        """Each strategy by its kind's spec (a key that is not the kind's is named)."""
        if not isinstance(value, list):
            return value
        out = []
        for i, entry in enumerate(value):
            if isinstance(entry, StrategySpec):
                out.append(entry)
                continue
            try:
                out.append(parse_strategy(entry))
            except ValidationError as err:
                raise nested_error(err, i) from None
            except (FinedError, ValueError) as err:
                raise key_error(
                    f"{i}.kind" if isinstance(err, FinedError) else str(i), str(err)
                ) from None
        return out

    @field_validator("strategies")
    @classmethod
    def _names(cls, strategies: list[StrategySpec]) -> list[StrategySpec]:
        # Labels name directories of the run: a path ("../x", or absolute) would write outside.
        for i, spec in enumerate(strategies):
            if not NAME.fullmatch(spec.label):
                raise key_error(
                    f"{i}.label",
                    f"{spec.label!r} is not a name: use letters, digits and _ - . + (starting "
                    "with a letter or digit), not a path",
                )
            if spec.fallback is not None:
                _check_fallback(spec, spec.fallback, i)
        return strategies

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        labels = [s.label for s in self.strategies]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"strategy labels must be unique, repeated: {dupes}")
        if self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not one of the strategies {labels}")
        return self

    def fallback_of(self, spec: StrategySpec) -> StrategySpec | None:
        """The chain deployed instead of ``spec``'s where it looks forward better: its
        fallback kind with default settings, warm-started as ``spec`` is (so that in the
        paper's protocol the fallback is the base model from scratch too). The run's own
        strategy with those settings when it has one (its cells serve both), else a chain
        of its own, labelled ``LABEL@KIND``."""
        if spec.fallback is None:
            return None
        own = _fallback_chain(spec, spec.fallback)
        for other in self.strategies:
            if other.fallback is None and _trains_alike(other, own):
                return other
        return own

    def chains(self) -> list[StrategySpec]:
        """Every chain the run trains: its strategies, and the fallbacks they bring."""
        out = list(self.strategies)
        for spec in self.strategies:
            fallback = self.fallback_of(spec)
            if fallback is not None and fallback.label not in {x.label for x in out}:
                out.append(fallback)
        return out

    # -- what each piece is built with -------------------------------------------------------
    def model_settings_of(self, model: str) -> ModelConfig:
        return self.model_settings.get(model) or model_class(model).config_class()

    def train_config(self, **override: Any) -> TrainConfig:
        return resolve(TrainConfig, self.train.model_dump(), override, where="train")

    def adaptor_config(self, spec: StrategySpec) -> AdaptorConfig:
        """The run's adaptor settings with the strategy's own on top."""
        own = spec.adaptor_overrides()
        where = f"strategies.{spec.label}"
        return resolve(AdaptorConfig, self.adaptor.model_dump(), own, where=where)

    def kb_config(self, spec: StrategySpec) -> KBConfig:
        """The run's KB settings with the strategy's own on top."""
        own = spec.kb_overrides()
        return resolve(KBConfig, self.kb.model_dump(), own, where=f"strategies.{spec.label}.kb")


def _default(kind: str, warm_start: bool | None = None) -> StrategySpec:
    """The spec of ``kind`` with its default settings."""
    return parse_strategy({"kind": kind, "warm_start": warm_start})


def _fallback_chain(spec: StrategySpec, kind: str) -> StrategySpec:
    """The fallback ``kind`` of ``spec`` as a chain of its own: the kind's default settings,
    warm-started as ``spec`` is, labelled ``LABEL@KIND``."""
    default = _default(kind)
    warm = None if default.warm == spec.warm else spec.warm
    return _default(kind, warm).model_copy(update={"label": f"{spec.label}{FALLBACK_JOIN}{kind}"})


def _check_fallback(spec: StrategySpec, kind: str, i: int) -> None:
    """A fallback must be a strategy of its own: a known kind, standing alone, and not the
    strategy itself (which would train a copy of its chain and always tie with it)."""
    key = f"{i}.fallback"
    try:
        own = _fallback_chain(spec, kind)
    except FinedError as err:
        raise key_error(key, str(err)) from None
    if own.fallback is not None:
        raise key_error(key, f"{kind!r} has a fallback of its own; a fallback must stand alone")
    if _trains_alike(spec, own):
        raise key_error(
            key,
            f"{kind!r} is the strategy itself (same kind, settings and warm start): it would "
            "train a copy of its own chain and always tie with it; drop `fallback` or name "
            "another kind",
        )


def _trains_alike(a: StrategySpec, b: StrategySpec) -> bool:
    """Whether two strategies train the same chain: the same kind and settings and the same
    warm start, whatever they are called or fall back to."""
    names = {"label", "family", "warm_start", "fallback"}
    return a.warm == b.warm and a.model_dump(exclude=names) == b.model_dump(exclude=names)


def load_run_config(
    path: str | Path, quick: bool = False, sets: dict[str, Any] | None = None
) -> RunConfig:
    """Read and validate a run config; ``sets`` are dotted ``key=value`` overrides."""
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise FinedError(f"{path}: expected a mapping at the top level")
    if quick:
        doc = merge(doc, doc.get("quick") or {})
    config = parse_model(RunConfig, doc, str(path))  # the file's own mistakes, named as its
    if sets:  # then what the command line changed, named as its own
        shown = " ".join(f"{k}={v!r}" for k, v in sets.items())
        config = parse_model(RunConfig, merge(doc, nested(sets)), f"--set {shown}")
    for spec in config.strategies:  # every KB variant must validate before hours of training
        if spec.uses_kb:
            config.kb_config(spec)
            config.adaptor_config(spec)
    return config
