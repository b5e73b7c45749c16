"""``fined run``: the period-by-period protocol, cell by cell, resumable.

For each seed and model a *warm-up* model learns the first s periods (the periods the KB
memorizes); it is every strategy's model of period s-1. Then for each strategy and each
t = s .. T-1: build the model (warm-started from the strategy's model of t-1), train it on the
strategy's rows for t, select the epoch on P_t's held-out slice, test on P_{t+1}, and evaluate
the held-out slices of P_0..P_t (row t of the forgetting matrix). The test period is only
scored, never used for a choice.

Every finished cell leaves its model and its record (``RunDirectory``: the record, written
last, marks it done and holds the weights' sha256, checked whenever they are read); a cell
cut short resumes from the trainer's last epoch checkpoint, a KB build from its own. So a
killed run, started again, ends with the same numbers. Seeds are derived from (seed, period)
(``step_seed``), never from how far a previous process got.

The pieces: the run directory (layout, config, records), the KB cache, the strategies (each
sees the run through a ``StrategyContext``), and this runner, which checks everything the
config implies before writing ``config.json``, then executes the chains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fined.artifacts.kb_store import FORMAT, kb_bytes
from fined.data.loader import PeriodStore
from fined.devices import resolve_device
from fined.errors import FinedError
from fined.io import read_json
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.ctr_model import CTRModel, build_model
from fined.models.trainable import Trainable
from fined.outputs import read_marker
from fined.protocol.config import RunConfig
from fined.protocol.data import ProtocolData
from fined.protocol.forward import choose_forward
from fined.protocol.kb_cache import KBCache
from fined.protocol.run_directory import RunDirectory
from fined.protocol.strategies import StrategyContext, StrategySpec, step_seed
from fined.train.kb_builder import check_l0_ramp
from fined.train.metrics import one_class
from fined.train.trainer import Trainer, seed_everything

Progress = Callable[[int, int, str, str], None]  # (done, total, current step, last result)


class Runner:
    def __init__(self, config: RunConfig, root: str | Path, progress: Progress | None = None):
        self.config, self.root = config, Path(root)
        self.directory = RunDirectory(root)
        self.progress = progress or (lambda *a: None)
        self.done = 0
        # Each chain's records once run or read: a fallback serves both its own strategy and
        # those it stands behind, and is counted in the progress once.
        self.chain_records: dict[tuple[str, str, int], list[dict[str, Any]]] = {}

    # -- set-up ----------------------------------------------------------------------------
    def open(self) -> None:
        """Check the config against an earlier start, prepare the data if needed, check
        everything the config implies against the data, then write ``config.json``. Called
        with the directory claimed (``run``), or in a worker of a run that holds it."""
        c = self.config
        # The KB format too: cells and cached KBs of an older layout cannot be resumed.
        # (model_format 2: FINED models with the adaptor's opening; earlier cells do not load)
        resolved = c.model_dump(mode="json", exclude={"quick", "device"}) | {
            "kb_format": FORMAT,
            "model_format": 2,
        }
        self.device = resolve_device(c.device)
        stored = self.directory.check_config(resolved)
        self.store = self._store()
        self.data = ProtocolData(self.store)
        fmap = self.store.feature_map
        resolved["data_fingerprint"] = fmap.data_fingerprint
        if stored is not None and stored.get("data_fingerprint") != fmap.data_fingerprint:
            raise FinedError(
                f"{self.root}: the data changed since this run started (fingerprint "
                f"{stored.get('data_fingerprint')}, now {fmap.data_fingerprint}); restore it, "
                "or --restart to discard the run"
            )
        last = (
            fmap.period_index(c.last_period) if c.last_period is not None else len(fmap.periods) - 1
        )
        self.s = c.kb_periods
        if self.s + 1 > last:
            raise FinedError(
                f"kb_periods={self.s} leaves no period to train and test on: the data has "
                f"periods 0..{last} in use (need at least kb_periods + 2)"
            )
        self.steps = list(range(self.s, last))  # trained at t, tested on t + 1
        self._check_against_data()
        self.default_kb_bytes = kb_bytes(KnowledgeBase(fmap, c.kb, self.s - 1))
        self.kbs = KBCache(
            self.directory,
            self.store,
            c.kb_train,
            self.s,
            self.device,
            announce=lambda what: self.progress(self.done, self.total, what, ""),
            built=lambda what: self._tick(what, "built"),
        )
        # Every KB to build counts as a step of the progress (and of its ETA): the first of
        # each variant and seed, and those a strategy rebuilds each period.
        chains = c.chains()
        builds = {
            self.kbs.name(c.kb_config(spec), seed, through)
            for spec in chains
            if spec.uses_kb
            for seed in c.seeds
            for through in (
                [t - 1 for t in self.steps] if spec.strategy.rebuilds_kb else [self.s - 1]
            )
        }
        cells = len(c.seeds) * len(c.models) * (1 + len(chains) * len(self.steps))
        self.total = cells + len(builds)
        if stored is None:
            self.directory.write_config(resolved)

    def _check_against_data(self) -> None:
        """What only the data can tell: every model and KB variant builds on it, and every
        KB's L0 penalty has finished ramping up before its build stops (hours of warm-up
        and baselines would otherwise run first)."""
        c, fmap = self.config, self.data.feature_map
        for model in c.models:
            self.base_model(model)
        kb_rows = sum(p.rows - p.holdout_rows for p in fmap.periods[: self.s])
        for spec in (x for x in c.strategies if x.uses_kb):
            kb_config = c.kb_config(spec)
            try:
                KnowledgeBase(fmap, kb_config, self.s - 1)
            except ValueError as err:
                raise FinedError(f"strategies.{spec.label}.kb: {err}") from None
            check_l0_ramp(kb_config, c.kb_train, kb_rows, ("kb_train.epochs", "kb.l0_warmup_steps"))
            tokens = c.adaptor_config(spec).tokens
            for model in c.models:
                self.base_model(model, tokens)

    def _store(self) -> PeriodStore:
        data = self.config.data
        if data.prepared is not None:
            return PeriodStore(data.prepared)
        assert data.prepare is not None
        directory = self.directory.data
        job = data.prepare.model_dump(mode="json")
        marker = read_marker(directory) if directory.is_dir() else None
        if marker is None or marker.get("job") != job:  # none yet, or from another config
            from fined.data.prepare import prepare

            self.progress(self.done, 0, "preparing the data", "")
            prepare(data.prepare, directory)
        return PeriodStore(directory)

    def _tick(self, current: str, result: str = "") -> None:
        self.done += 1
        self.progress(self.done, self.total, current, result)

    # -- shared pieces ---------------------------------------------------------------------
    def base_model(self, model: str, tokens: int = 0) -> CTRModel:
        settings = self.config.model_settings_of(model)
        return build_model(model, self.data.feature_map, settings, knowledge_tokens=tokens)

    def context(self, spec: StrategySpec, model: str, seed: int) -> StrategyContext:
        """What the strategy ``spec`` may use in the chain of (model, seed)."""
        c = self.config
        kb_config = c.kb_config(spec)
        return StrategyContext(
            data=self.data,
            model=model,
            seed=seed,
            base_model=lambda tokens: self.base_model(model, tokens),
            knowledge_base=lambda through: self.kbs.get(kb_config, seed, through, spec.label),
            adaptor=c.adaptor_config(spec),
            kb_train=c.kb_train,
            default_kb_bytes=self.default_kb_bytes,
            device=self.device,
        )

    def _evaluate(self, net: Trainable, t: int) -> tuple[dict[str, float], dict[str, float]]:
        """Test metrics on P_{t+1} and the AUC on the held-out slice of every P_i, i <= t."""
        trainer = Trainer(net, self.config.train_config(progress=False), device=self.device)
        rows = self.data.test(t + 1, t)
        undefined = one_class(rows.label)
        if undefined is not None:
            name = self.data.feature_map.periods[t + 1].name
            raise FinedError(
                f"period {name}: its rows are {undefined}: the test AUC is not defined there; "
                "end the run before it (periods.end) or merge it"
            )
        test = trainer.evaluate(rows)
        forgetting = {
            str(i): trainer.evaluate(self.data.holdout([i], t))["auc"] for i in range(t + 1)
        }
        return test, forgetting

    # -- the warm-up model ------------------------------------------------------------------
    def warmup(self, model: str, seed: int) -> dict[str, Any]:
        cell = self.directory.warmup(model, seed)
        label = f"warm-up {model} seed {seed}"
        if self.directory.done(cell):
            self._tick(label)
            return self.directory.record(cell, "warm-up record")
        t = self.s - 1
        past = list(range(self.s))
        seed_everything(step_seed(seed, t))
        net = self.base_model(model)
        config = self.config.train_config(seed=step_seed(seed, t), progress=False)
        trainer = Trainer(net, config, device=self.device)
        try:
            fit = trainer.fit(
                self.data.train(past, t), self.data.holdout(past, t), cell / "train", resume=True
            )
        except FinedError as err:  # said of the cell it happened in
            raise FinedError(f"{label}: {err}") from None
        test, forgetting = self._evaluate(net, t)
        record = {
            "model": model,
            "seed": seed,
            "t": t,
            "best_epoch": fit.best_epoch,
            "valid_auc": fit.best.get("auc"),
            "test_auc": test["auc"],
            "forgetting": forgetting,
        }
        self.directory.finish(cell, net, {"train_periods": past}, record)
        self._tick(label, f"valid AUC {fit.best.get('auc', float('nan')):.4f}")
        return record

    # -- one strategy's chain over the periods -----------------------------------------------
    def chain(self, spec: StrategySpec, model: str, seed: int) -> list[dict[str, Any]]:
        """The strategy's records, period by period; with a fallback, each period the model
        of whichever of the two chains looks forward better (``fined.protocol.forward``)."""
        own = self._chain(spec, model, seed)
        fallback = self.config.fallback_of(spec)
        if fallback is None:
            return own
        return choose_forward(own, self._chain(fallback, model, seed))

    def _chain(self, spec: StrategySpec, model: str, seed: int) -> list[dict[str, Any]]:
        key = (spec.label, model, seed)
        if key not in self.chain_records:
            self.chain_records[key] = self._train_chain(spec, model, seed)
        return self.chain_records[key]

    def _train_chain(self, spec: StrategySpec, model: str, seed: int) -> list[dict[str, Any]]:
        strategy = spec.strategy(spec, self.context(spec, model, seed))
        chain = self.directory.chain(spec.label, model, seed)
        warmup = self.directory.warmup(model, seed)
        previous = self.directory.weights(warmup, self.directory.record(warmup, "warm-up record"))
        from_warmup = True
        records: list[dict[str, Any]] = []
        fmap = self.data.feature_map
        for t in self.steps:
            cell = chain / f"t{t}"
            label = f"{spec.label} {model} seed {seed} {fmap.periods[t].name}"
            if self.directory.done(cell):
                records.append(self.directory.record(cell))
                self._tick(label)
                continue
            if records:  # the model of t-1, as saved (a resumed run reads the same file)
                previous = self.directory.weights(chain / f"t{records[-1]['t']}", records[-1])
                from_warmup = False
            self.progress(self.done, self.total, label, "")
            kb_before = self.kbs.seconds
            seed_everything(step_seed(seed, t))  # the initial weights of a fresh model
            net = strategy.build(t, previous, from_warmup)
            config = self.config.train_config(seed=step_seed(seed, t), progress=False)
            rows = strategy.rows(t)
            try:
                fit = Trainer(strategy.trainable(net), config, device=self.device).fit(
                    rows, self.data.holdout([t], t), cell / "train", resume=True
                )
            except FinedError as err:  # said of the cell it happened in
                raise FinedError(f"{label}: {err}") from None
            net.eval()
            test, forgetting = self._evaluate(net, t)
            kept = strategy.bytes_kept(net, t)
            absorbed = time.perf_counter()
            strategy.after_period(net, t)  # the streaming KB absorbs P_t (used from t + 1)
            kb_seconds = self.kbs.seconds - kb_before + time.perf_counter() - absorbed
            record = {
                "strategy": spec.label,
                "kind": spec.kind,
                "model": model,
                "seed": seed,
                "t": t,
                "period": fmap.periods[t].name,
                "test_period": fmap.periods[t + 1].name,
                "auc": test["auc"],
                "logloss": test["logloss"],
                "gauc": test["gauc"],
                "valid_auc": fit.best.get("auc"),
                "best_epoch": fit.best_epoch,
                "epochs": len(fit.history),
                "train_rows": len(rows),
                "train_seconds": fit.seconds,
                "kb_seconds": kb_seconds,  # KB builds (or absorbing) this cell waited for
                "bytes_kept": kept,
                "forgetting": forgetting,
            }
            self.directory.finish(cell, net, {"train_periods": strategy.periods(t)}, record)
            if records:
                self.directory.drop_model(chain / f"t{records[-1]['t']}")
            records.append(record)
            self._tick(label, f"test AUC {test['auc']:.4f}")
        return records

    def kb_figure(self, path: Path) -> bool:
        """The gate heatmap of the first KB variant (first seed) on the KB periods' held-out
        rows; False when no strategy uses a KB."""
        from fined.knowledge.inspection import inspect_kb
        from fined.report.plots import gate_heatmap

        spec = next((x for x in self.config.strategies if x.uses_kb), None)
        if spec is None:
            return False
        seed = self.config.seeds[0]
        kb = self.kbs.get(self.config.kb_config(spec), seed, label=spec.label)
        past = list(range(self.s))
        names = self.data.feature_map.periods
        title = (
            f"KB of {spec.label}, seed {seed}: periods {names[0].name}..{names[self.s - 1].name}"
        )
        truth = _ground_truth(self.store.directory)
        planted = [p["fields"] for p in truth["patterns"]] if truth else None
        ins = inspect_kb(kb, self.data.holdout(past, self.s - 1))
        gate_heatmap(ins, path, title, planted)
        return True

    # -- everything -------------------------------------------------------------------------
    def run(self, jobs: int = 1, restart: bool = False) -> Any:
        """Claim and lock the run directory (``restart``: first delete what an earlier run
        wrote there), run or finish every cell, write the outputs; returns the summary. With
        ``jobs`` > 1 the (seed, model) chains run in worker processes first; the pass below
        then reads what they wrote, as when a run resumes."""
        from fined.protocol.outputs import write_outputs

        with self.directory.claimed(restart):
            self.open()
            started = time.perf_counter()
            if jobs > 1:
                self._in_workers(jobs)
            result = self._cells()
            result["seconds"] = time.perf_counter() - started
            periods = [p.name for p in self.data.feature_map.periods]
            off = _switched_off(self.store.directory, periods)
            summary = write_outputs(self.root, self.config, result, periods, self.s, off)
            self.kb_figure(self.root / "figures" / "kb_patterns.png")
        return summary

    def chains_of(self, model: str, seed: int) -> None:
        """The warm-up and every strategy's chain of one (model, seed)."""
        self.warmup(model, seed)
        for spec in self.config.strategies:
            self.chain(spec, model, seed)

    def _in_workers(self, jobs: int) -> None:
        from fined.protocol.parallel import run_in_workers

        groups = [(seed, model) for seed in self.config.seeds for model in self.config.models]
        run_in_workers(self, groups, jobs, _worker)
        self.done = 0

    def _cells(self) -> dict[str, Any]:
        c = self.config
        warmups: dict[tuple[str, int], dict[str, Any]] = {}
        records: list[dict[str, Any]] = []
        for seed in c.seeds:
            for model in c.models:
                warmups[(model, seed)] = self.warmup(model, seed)
                for spec in c.strategies:
                    records.extend(self.chain(spec, model, seed))
        return {"records": records, "warmups": warmups}


def _worker(config: RunConfig, root: Path, seed: int, model: str, progress: Progress) -> None:
    """One worker process of ``--jobs``: the chains of one (seed, model) of a run its parent
    holds and has opened."""
    runner = Runner(config, root, progress)
    runner.open()
    runner.chains_of(model, seed)


def _ground_truth(directory: Path) -> dict[str, Any] | None:
    """The synthetic data's ground truth (None for other data)."""
    path = directory / "ground_truth.json"
    if not path.is_file():
        return None
    truth = read_json(path, "synthetic ground truth")
    return truth if isinstance(truth, dict) and "patterns" in truth else None


def _switched_off(directory: Path, periods: list[str]) -> set[str]:
    """Periods whose regime switches some planted pattern off (synthetic data only)."""
    truth = _ground_truth(directory)
    if truth is None or "regimes" not in truth:
        return set()
    every = set(range(len(truth["patterns"])))
    return {periods[i] for i, active in enumerate(truth["regimes"])
            if i < len(periods) and set(active) != every}  # fmt: skip
