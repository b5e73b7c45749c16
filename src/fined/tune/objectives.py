"""What a trial runs, and the validation figure it is judged by.

- ``TrainObjective``: one training job (``fined train``) with the trial's settings; judged by
  the best epoch's validation metric (the held-out tails of the training periods, or what
  ``valid`` names). The test periods are not given to it.
- ``RunObjective``: the continual protocol with one strategy and the trial's settings;
  judged by that strategy's forward AUC (mean over models and seeds): how each of its models
  of t-1 scored P_t, over every step but the first; the last period, every chain's final
  test, plays no part. (The held-out slices of the periods trained on, the figure before,
  reward remembering: on a log where the past does not pay they chose the wrong strategy.)

Both are picklable (trials may run in worker processes) and resume a trial cut short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fined.config import load_yaml, merge, nested
from fined.errors import FinedError

ONE_STEP = (
    "one step (kb_periods to the last period) leaves no forward AUC to tune on: a trial is "
    "judged by how its models of t-1 score P_t, which needs at least two steps"
)


@dataclass
class TrainObjective:
    data: str
    model: str
    train_periods: str
    valid: str = "holdout"
    settings: dict[str, Any] = field(default_factory=dict)  # the model's, before the trial's
    train: dict[str, Any] = field(default_factory=dict)  # the trainer's, before the trial's
    kb: str | None = None
    monitor: str = "auc"
    device: str = "auto"  # where trials compute; not part of what the search is

    def layers(self, trial: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's and the trainer's settings of a trial (``train.KEY`` keys go to the
        trainer)."""
        own = {k: v for k, v in trial.items() if not k.startswith("train.")}
        trainer = {k.removeprefix("train."): v for k, v in trial.items() if k.startswith("train.")}
        return {**self.settings, **own}, {**self.train, **trainer, "progress": False}

    def check_inputs(self) -> None:
        """The data, the training periods and the KB (its digests, sizes and periods), read
        before the search writes anything."""
        from fined.data.loader import PeriodStore
        from fined.train.job import load_job_kb
        from fined.train.selection import parse_periods

        store = PeriodStore(self.data)
        periods = parse_periods(self.train_periods, store.feature_map)
        if self.kb is not None:
            load_job_kb(store, self.kb, max(periods))

    def check(self, trial: dict[str, Any], where: str) -> None:
        """Validate a trial's settings without training: a misspelt key or a bad value fails
        before the search writes anything."""
        from fined.config import parse_model, resolve
        from fined.knowledge.adaptor import AdaptorConfig
        from fined.models.ctr_model import model_config
        from fined.train.config import TrainConfig

        model, trainer = self.layers(trial)
        adaptor = _adaptor_settings(model)
        try:
            resolve(TrainConfig, trainer, where="train")
            model_config(self.model, model)
            if adaptor:
                parse_model(AdaptorConfig, adaptor, "adaptor")
        except FinedError as err:
            raise FinedError(f"{where}: {err}") from None

    def __call__(self, trial: dict[str, Any], directory: Path) -> dict[str, float]:
        from fined.train.job import train_model

        model, trainer = self.layers(trial)
        adaptor = _adaptor_settings(model)
        job = train_model(
            self.data, self.model, self.train_periods, directory, valid=self.valid,
            settings=model, train=trainer, kb=self.kb, adaptor=adaptor or None, resume=True,
            device=self.device, forward_check=False,  # a trial tunes the model it was asked
        )  # fmt: skip
        best = job.metrics["valid"]
        sign = -1 if self.monitor == "logloss" else 1  # the objective is maximized
        return {"valid_auc": best["auc"], "valid_logloss": best["logloss"],
                "objective": sign * best[self.monitor]}  # fmt: skip


@dataclass
class RunObjective:
    config: str  # a run config file
    strategy: str  # the label of the strategy tuned
    quick: bool = False
    sets: dict[str, Any] = field(default_factory=dict)  # --set overrides before the trial's
    device: str | None = None  # None: the config's

    def document(self, trial: dict[str, Any]) -> dict[str, Any]:
        """The run config of a trial: only the tuned strategy (its own baseline), with the
        trial's ``strategy.KEY`` settings on it and its other keys on the config."""
        doc = load_yaml(self.config)
        if not isinstance(doc, dict):
            raise FinedError(f"{self.config}: expected a mapping at the top level")
        if self.quick:
            doc = merge(doc, doc.get("quick") or {})
        own = {
            k.removeprefix("strategy."): v for k, v in trial.items() if k.startswith("strategy.")
        }
        doc = merge(doc, nested({**self.sets, **{k: v for k, v in trial.items()
                                                 if not k.startswith("strategy.")}}))  # fmt: skip
        chosen = [s for s in doc.get("strategies") or [] if _label(s) == self.strategy]
        if not chosen:
            raise FinedError(f"{self.config}: no strategy labelled {self.strategy!r}")
        entry = {"kind": chosen[0]} if isinstance(chosen[0], str) else dict(chosen[0])
        doc["strategies"] = [merge(entry, nested(own))]
        doc["baseline"] = self.strategy
        doc.pop("quick", None)
        return doc

    def check_inputs(self) -> None:
        """What the base run config implies, checked against its data (when it names a
        prepared directory: a prepare job's periods are known only once it has run)."""
        self.check({}, str(self.config))

    def check(self, trial: dict[str, Any], where: str) -> None:
        """Validate a trial's run config without running it: a misspelt key, a bad value, or
        (on prepared data) periods that leave fewer than two steps fail before the search
        writes anything."""
        from fined.config import parse_model
        from fined.data.feature_map import FeatureMap
        from fined.protocol.config import RunConfig
        from fined.protocol.opened_run import run_steps

        config = parse_model(RunConfig, self.document(trial), where)
        if config.data.prepared is None:
            return
        try:
            steps = run_steps(config, FeatureMap.load(config.data.prepared))
        except FinedError as err:
            raise FinedError(f"{where}: {err}") from None
        if len(steps) < 2:
            raise FinedError(f"{where}: {ONE_STEP}")

    def __call__(self, trial: dict[str, Any], directory: Path) -> dict[str, float]:
        import polars as pl

        from fined.config import parse_model
        from fined.protocol.config import RunConfig
        from fined.protocol.runner import Runner

        config = parse_model(RunConfig, self.document(trial), f"{self.config} (trial)")
        if self.device is not None:
            config = config.model_copy(update={"device": self.device})
        summary = Runner(config, directory).run()
        row = summary.filter(pl.col("strategy") == self.strategy)
        held_out = float(row.select(pl.col("held_out_auc_mean").mean()).item())
        forward = float(row.select(pl.col("forward_auc_mean").mean()).item())
        if math.isnan(forward):  # a prepare job's periods: known only once it has run
            raise FinedError(f"{self.config}: {ONE_STEP}")
        return {"held_out_auc": held_out, "forward_auc": forward, "objective": forward}


def _adaptor_settings(model: dict[str, Any]) -> dict[str, Any]:
    """Takes the ``adaptor.KEY`` settings out of a trial's model settings."""
    return {k.removeprefix("adaptor."): model.pop(k) for k in list(model)
            if k.startswith("adaptor.")}  # fmt: skip


def _label(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    return str(entry.get("label") or entry.get("kind"))
