"""A ``fined run`` opened: its config checked against an earlier start and against the data,
the data prepared (or opened), and what every chain shares: the periods, the knowledge
bases, fresh models and each strategy's view of the run. Built whole by ``open_run``
(``Runner.open``), never changed after."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fined.artifacts.kb_store import FORMAT, kb_bytes
from fined.data.datasets.synthetic import GroundTruth, read_ground_truth
from fined.data.feature_map import FeatureMap
from fined.data.loader import PeriodStore
from fined.devices import resolve_device
from fined.errors import FinedError
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.ctr_model import CTRModel, build_model
from fined.protocol.config import RunConfig
from fined.protocol.data import ProtocolData
from fined.protocol.kb_cache import KBCache
from fined.protocol.progress import RunProgress
from fined.protocol.run_directory import RunDirectory
from fined.protocol.strategies import StrategyContext, StrategySpec
from fined.train.kb_builder import check_l0_ramp
from fined.train.metrics import test_period_refused, too_few_to_rank

# Part of a run's identity, beside its config: cells and cached KBs of an older layout cannot
# be resumed (model_format 2: FINED models with the adaptor's opening; earlier cells do not
# load).
MODEL_FORMAT = 3


@dataclass(frozen=True)
class OpenedRun:
    """A run whose config has been checked against its data: what every cell shares."""

    config: RunConfig
    directory: RunDirectory
    device: torch.device
    store: PeriodStore
    data: ProtocolData
    s: int  # kb_periods: the KB and every warm-up model learn P_0..P_{s-1}
    steps: tuple[int, ...]  # the periods trained on, one after the other (each tested on t+1)
    kbs: KBCache
    default_kb_bytes: int  # the size of a KB of the run's default settings
    truth: GroundTruth | None  # what a synthetic dataset planted (None for other data)

    @property
    def root(self) -> Path:
        return self.directory.root

    @property
    def periods(self) -> list[str]:
        """The names of every period of the data."""
        return [p.name for p in self.data.feature_map.periods]

    def base_model(self, model: str, tokens: int = 0) -> CTRModel:
        return _base_model(self.config, self.data.feature_map, model, tokens)

    def context(self, spec: StrategySpec, model: str, seed: int) -> StrategyContext:
        """What the strategy ``spec`` may use in the chain of (model, seed)."""
        kb_config = self.config.kb_config(spec)
        return StrategyContext(
            data=self.data,
            model=model,
            seed=seed,
            base_model=lambda tokens: self.base_model(model, tokens),
            knowledge_base=lambda through: self.kbs.get(kb_config, seed, through, spec.label),
            adaptor=self.config.adaptor_config(spec),
            kb_train=self.config.kb_train,
            default_kb_bytes=self.default_kb_bytes,
            device=self.device,
        )


def open_run(config: RunConfig, directory: RunDirectory, progress: RunProgress) -> OpenedRun:
    """Check the config against an earlier start, prepare the data if needed, check
    everything the config implies against the data, count the run's steps into
    ``progress``, then write ``config.json``. Called with the directory claimed, or in a
    worker of a run that holds it."""
    c = config
    resolved = c.model_dump(mode="json", exclude={"quick", "device"}) | {
        "kb_format": FORMAT,
        "model_format": MODEL_FORMAT,
    }
    device = resolve_device(c.device, "device:")  # a --device given was put there
    stored = directory.check_config(resolved)
    store = _store(c, directory, progress)
    data = ProtocolData(store)
    fmap = store.feature_map
    resolved["data_fingerprint"] = fmap.data_fingerprint
    if stored is not None and stored.get("data_fingerprint") != fmap.data_fingerprint:
        raise FinedError(
            f"{directory.root}: the data changed since this run started (fingerprint "
            f"{stored.get('data_fingerprint')}, now {fmap.data_fingerprint}); restore it, "
            "or --restart to discard the run"
        )
    s = c.kb_periods
    steps = run_steps(c, fmap)
    _check_against_data(c, fmap, s)
    _check_test_periods(fmap, steps)
    default_kb_bytes = kb_bytes(KnowledgeBase(fmap, c.kb, s - 1))
    kbs = KBCache(
        directory,
        store,
        c.kb_train,
        s,
        device,
        announce=lambda what: progress.show(what),
        built=lambda what: progress.tick(what, "built"),
    )
    # Every KB to build counts as a step of the progress (and of its ETA): the first of
    # each variant and seed, and those a strategy rebuilds each period.
    chains = c.chains()
    builds = {
        kbs.name(c.kb_config(spec), seed, through)
        for spec in chains
        if spec.uses_kb
        for seed in c.seeds
        for through in ([t - 1 for t in steps] if spec.strategy.rebuilds_kb else [s - 1])
    }
    progress.total = len(c.seeds) * len(c.models) * (1 + len(chains) * len(steps)) + len(builds)
    run = OpenedRun(
        config=c,
        directory=directory,
        device=device,
        store=store,
        data=data,
        s=s,
        steps=steps,
        kbs=kbs,
        default_kb_bytes=default_kb_bytes,
        truth=read_ground_truth(store.directory),
    )
    if stored is None:
        directory.write_config(resolved)
    return run


def run_steps(config: RunConfig, fmap: FeatureMap) -> tuple[int, ...]:
    """The periods a run of ``config`` trains on, one after the other (each tested on the
    next): kb_periods .. the period before the last in use."""
    last = (
        fmap.period_index(config.last_period)
        if config.last_period is not None
        else len(fmap.periods) - 1
    )
    s = config.kb_periods
    if s + 1 > last:
        raise FinedError(
            f"kb_periods={s} leaves no period to train and test on: the data has "
            f"periods 0..{last} in use (need at least kb_periods + 2)"
        )
    return tuple(range(s, last))


def _check_test_periods(fmap: FeatureMap, steps: tuple[int, ...]) -> None:
    """Every test period can rank: a test AUC from fewer rows of a class than
    ``MIN_CLASS_ROWS`` would be noise averaged into the run's figures (a 2-row period gave
    0.0000). Refused before anything is trained."""
    for t in steps:
        period = fmap.periods[t + 1]
        said = too_few_to_rank(period.positives, period.rows - period.positives)
        if said is not None:
            raise FinedError(test_period_refused(period.name, said))


def _base_model(config: RunConfig, fmap: FeatureMap, model: str, tokens: int) -> CTRModel:
    return build_model(model, fmap, config.model_settings_of(model), knowledge_tokens=tokens)


def _check_against_data(config: RunConfig, fmap: FeatureMap, s: int) -> None:
    """What only the data can tell: every model and KB variant builds on it, and every
    KB's L0 penalty has finished ramping up before its build stops (hours of warm-up
    and baselines would otherwise run first)."""
    for model in config.models:
        _base_model(config, fmap, model, 0)
    kb_rows = sum(p.rows - p.holdout_rows for p in fmap.periods[:s])
    for spec in (x for x in config.strategies if x.uses_kb):
        kb_config = config.kb_config(spec)
        try:
            KnowledgeBase(fmap, kb_config, s - 1)
        except ValueError as err:
            raise FinedError(f"strategies.{spec.label}.kb: {err}") from None
        check_l0_ramp(
            kb_config, config.kb_train, kb_rows, ("kb_train.epochs", "kb.l0_warmup_steps")
        )
        tokens = config.adaptor_config(spec).tokens
        for model in config.models:
            _base_model(config, fmap, model, tokens)


def _store(config: RunConfig, directory: RunDirectory, progress: RunProgress) -> PeriodStore:
    """The run's data: a prepared directory, or its prepare job's output in the run's
    ``data/`` (prepared there first unless it already is)."""
    data = config.data
    if data.prepared is not None:
        return PeriodStore(data.prepared)
    assert data.prepare is not None
    from fined.data.prepare import ensure_prepared

    def preparing() -> None:
        progress.report(progress.done, 0, "preparing the data", "")  # no total yet

    return PeriodStore(ensure_prepared(data.prepare, directory.data, preparing))
