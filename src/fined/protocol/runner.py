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
sees the run through a ``StrategyContext``), the opened run (``opened_run``: everything the
config implies, checked before ``config.json`` is written), and this runner, which executes
the chains of an opened run and writes its report (``run_report``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from fined.errors import FinedError
from fined.models.trainable import Trainable
from fined.protocol.config import RunConfig
from fined.protocol.forward import choose_forward
from fined.protocol.opened_run import OpenedRun, open_run
from fined.protocol.progress import Report, RunProgress
from fined.protocol.run_directory import RunDirectory
from fined.protocol.strategies import StrategySpec, step_seed
from fined.report.records import CellRecord, RunResult, WarmupRecord
from fined.train.metrics import test_period_refused, too_few_to_rank
from fined.train.trainer import Trainer, seed_everything

if TYPE_CHECKING:
    import polars as pl


class Runner:
    """Runs the cells of a run: ``run`` opens it (``open``), trains or reads back every
    warm-up and chain, and writes the report. Its progress and the chains' records are
    counted and kept here; what the run is, is the opened run's."""

    def __init__(self, config: RunConfig, root: str | Path, progress: Report | None = None):
        self.config, self.root = config, Path(root)
        self.directory = RunDirectory(root)
        self.progress = RunProgress(progress)
        # Each chain's records once run or read: a fallback serves both its own strategy and
        # those it stands behind, and is counted in the progress once.
        self.chain_records: dict[tuple[str, str, int], list[CellRecord]] = {}

    def open(self) -> OpenedRun:
        """The run opened (``fined.protocol.opened_run``): called with the directory claimed
        (``run``), or in a worker of a run that holds it."""
        return open_run(self.config, self.directory, self.progress)

    def _evaluate(
        self, run: OpenedRun, net: Trainable, t: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Test metrics on P_{t+1} and the AUC on the held-out slice of every P_i, i <= t."""
        trainer = Trainer(net, self.config.train_config(progress=False), device=run.device)
        rows = run.data.test(t + 1, t)
        clicks = int(rows.label.sum())
        undefined = too_few_to_rank(clicks, len(rows) - clicks)
        if undefined is not None:  # checked when the run opened: this holds the rows read
            name = run.data.feature_map.periods[t + 1].name
            raise FinedError(test_period_refused(name, undefined))
        test = trainer.evaluate(rows)
        forgetting = {
            str(i): trainer.evaluate(run.data.holdout([i], t))["auc"] for i in range(t + 1)
        }
        return test, forgetting

    # -- the warm-up model ------------------------------------------------------------------
    def warmup(self, run: OpenedRun, model: str, seed: int) -> WarmupRecord:
        cell = self.directory.warmup(model, seed)
        label = f"warm-up {model} seed {seed}"
        if self.directory.done(cell):
            self.progress.tick(label)
            return self.directory.warmup_record(cell)
        t = run.s - 1
        past = list(range(run.s))
        seed_everything(step_seed(seed, t))
        net = run.base_model(model)
        config = self.config.train_config(seed=step_seed(seed, t), progress=False)
        trainer = Trainer(net, config, device=run.device)
        try:
            fit = trainer.fit(
                run.data.train(past, t), run.data.holdout(past, t), cell / "train", resume=True
            )
        except FinedError as err:  # said of the cell it happened in, as the same kind
            raise type(err)(f"{label}: {err}") from None
        test, forgetting = self._evaluate(run, net, t)
        weights = self.directory.save_model(cell, net, {"train_periods": past})
        record = WarmupRecord(
            model=model,
            seed=seed,
            t=t,
            best_epoch=fit.best_epoch,
            valid_auc=fit.best.get("auc"),
            test_auc=test["auc"],
            forgetting=forgetting,
            weights_sha256=weights,
        )
        self.directory.finish(cell, record)
        self.progress.tick(label, f"valid AUC {fit.best.get('auc', float('nan')):.4f}")
        return record

    # -- one strategy's chain over the periods -----------------------------------------------
    def chain(self, run: OpenedRun, spec: StrategySpec, model: str, seed: int) -> list[CellRecord]:
        """The strategy's records, period by period; with a fallback, each period the model
        of whichever of the two chains looks forward better (``fined.protocol.forward``)."""
        own = self._chain(run, spec, model, seed)
        fallback = self.config.fallback_of(spec)
        if fallback is None:
            return own
        return choose_forward(own, self._chain(run, fallback, model, seed))

    def _chain(self, run: OpenedRun, spec: StrategySpec, model: str, seed: int) -> list[CellRecord]:
        key = (spec.label, model, seed)
        if key not in self.chain_records:
            self.chain_records[key] = self._train_chain(run, spec, model, seed)
        return self.chain_records[key]

    def _train_chain(
        self, run: OpenedRun, spec: StrategySpec, model: str, seed: int
    ) -> list[CellRecord]:
        strategy = spec.strategy(spec, run.context(spec, model, seed))
        chain = self.directory.chain(spec.label, model, seed)
        warmup = self.directory.warmup(model, seed)
        previous = self.directory.weights(warmup, self.directory.warmup_record(warmup))
        from_warmup = True
        records: list[CellRecord] = []
        fmap = run.data.feature_map
        for t in run.steps:
            cell = chain / f"t{t}"
            label = f"{spec.label} {model} seed {seed} {fmap.periods[t].name}"
            if self.directory.done(cell):
                records.append(self.directory.record(cell))
                self.progress.tick(label)
                continue
            if records:  # the model of t-1, as saved (a resumed run reads the same file)
                previous = self.directory.weights(chain / f"t{records[-1].t}", records[-1])
                from_warmup = False
            self.progress.show(label)
            kb_before = run.kbs.seconds
            seed_everything(step_seed(seed, t))  # the initial weights of a fresh model
            net = strategy.build(t, previous, from_warmup)
            config = self.config.train_config(seed=step_seed(seed, t), progress=False)
            rows = strategy.rows(t)
            try:
                fit = Trainer(strategy.trainable(net), config, device=run.device).fit(
                    rows, run.data.holdout([t], t), cell / "train", resume=True
                )
            except FinedError as err:  # said of the cell it happened in, as the same kind
                raise type(err)(f"{label}: {err}") from None
            net.eval()
            test, forgetting = self._evaluate(run, net, t)
            kept = strategy.bytes_kept(net, t)
            use = strategy.knowledge_use(net, t)
            absorbed = time.perf_counter()
            strategy.after_period(net, t)  # the streaming KB absorbs P_t (used from t + 1)
            kb_seconds = run.kbs.seconds - kb_before + time.perf_counter() - absorbed
            weights = self.directory.save_model(cell, net, {"train_periods": strategy.periods(t)})
            record = CellRecord(
                strategy=spec.label,
                kind=spec.kind,
                model=model,
                seed=seed,
                t=t,
                period=fmap.periods[t].name,
                test_period=fmap.periods[t + 1].name,
                auc=test["auc"],
                logloss=test["logloss"],
                gauc=test["gauc"],
                valid_auc=fit.best.get("auc"),
                best_epoch=fit.best_epoch,
                epochs=len(fit.history),
                train_rows=len(rows),
                train_seconds=fit.seconds,
                kb_seconds=kb_seconds,
                bytes_kept=kept,
                forgetting=forgetting,
                weights_sha256=weights,
                knowledge=use,
            )
            self.directory.finish(cell, record)
            if records:
                self.directory.drop_model(chain / f"t{records[-1].t}")
            records.append(record)
            self.progress.tick(label, f"test AUC {test['auc']:.4f}")
        return records

    # -- everything -------------------------------------------------------------------------
    def run(self, jobs: int = 1, restart: bool = False) -> pl.DataFrame:
        """Claim and lock the run directory (``restart``: first delete what an earlier run
        wrote there), run or finish every cell, write the report; returns the summary. With
        ``jobs`` > 1 the (seed, model) chains run in worker processes first; the pass below
        then reads what they wrote, as when a run resumes."""
        from fined.protocol.run_report import write_report

        with self.directory.claimed(restart):
            run = self.open()
            started = time.perf_counter()
            if jobs > 1:
                self._in_workers(jobs)
            records, warmups = self._cells(run)
            result = RunResult(
                records=records, warmups=warmups, seconds=time.perf_counter() - started
            )
            return write_report(run, result)

    def chains_of(self, run: OpenedRun, model: str, seed: int) -> None:
        """The warm-up and every strategy's chain of one (model, seed)."""
        self.warmup(run, model, seed)
        for spec in self.config.strategies:
            self.chain(run, spec, model, seed)

    def _in_workers(self, jobs: int) -> None:
        from fined.protocol.parallel import run_in_workers

        groups = [(seed, model) for seed in self.config.seeds for model in self.config.models]
        run_in_workers(self.config, self.root, self.progress, groups, jobs, _worker)
        self.progress.done = 0  # the pass that follows counts every cell again, as read

    def _cells(self, run: OpenedRun) -> tuple[list[CellRecord], list[WarmupRecord]]:
        c = self.config
        warmups: list[WarmupRecord] = []
        records: list[CellRecord] = []
        for seed in c.seeds:
            for model in c.models:
                warmups.append(self.warmup(run, model, seed))
                for spec in c.strategies:
                    records.extend(self.chain(run, spec, model, seed))
        return records, warmups


def _worker(config: RunConfig, root: Path, seed: int, model: str, progress: Report) -> None:
    """One worker process of ``--jobs``: the chains of one (seed, model) of a run its parent
    holds and has opened."""
    runner = Runner(config, root, progress)
    runner.chains_of(runner.open(), model, seed)
