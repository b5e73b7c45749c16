"""``fined run``: the period-by-period protocol, cell by cell, resumable.

For each seed and model a *warm-up* model learns the first s periods (the periods the KB
memorizes); it is every strategy's model of period s-1. Then for each strategy and each
t = s .. T-1: build the model (warm-started from the strategy's model of t-1), train it on the
strategy's rows for t, select the epoch on P_t's held-out slice, test on P_{t+1}, and evaluate
the held-out slices of P_0..P_t (row t of the forgetting matrix). The test period is only
scored, never used for a choice.

Every finished (strategy, model, seed, period) cell leaves ``model.safetensors`` and
``record.json`` (written last: its presence marks the cell done, and it holds the weights'
sha256, checked whenever they are read); a cell cut short resumes from the trainer's last
epoch checkpoint, a KB build from its own. So a killed run, started again, ends with the same
numbers. Seeds are derived from (seed, period), never from how far a previous process got.

The run directory is claimed and locked for the run's life (``fined.outputs``); everything
the config implies is checked before ``config.json`` is written, and a run refuses to resume
on a changed config or changed data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from fined.artifacts.kb_store import FORMAT, kb_bytes, load_kb
from fined.artifacts.weights import read_weights, save_weights
from fined.data.loader import PeriodStore
from fined.errors import FinedError
from fined.io import atomic_write_json, exclusive, read_json
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.models.ctr_model import CTRModel, build_model
from fined.outputs import owned_directory, read_marker
from fined.protocol.config import RunConfig, StrategySpec
from fined.protocol.data import ProtocolData
from fined.protocol.strategies import STRATEGIES
from fined.train.kb_builder import check_l0_ramp
from fined.train.trainer import Trainer, seed_everything

RECORD, WEIGHTS = "record.json", "model.safetensors"
COMMAND = "run"  # the owner named in a run directory's marker
# Everything a run writes at the top of its directory: what --restart deletes (nothing else).
ENTRIES = (
    "config.json", "data", "kb", "warmup", "cells", "results.csv", "forgetting.csv",
    "summary.csv", "report.md", "figures",
)  # fmt: skip
Progress = Callable[[int, int, str, str], None]  # (done, total, current step, last result)


def step_seed(seed: int, period: int) -> int:
    return seed * 1000 + period


def _digest(path: Path, record: dict[str, Any]) -> str:
    digest = record.get("weights_sha256") if isinstance(record, dict) else None
    if not isinstance(digest, str):
        raise FinedError(f"{path}: no weights_sha256 (not a complete cell record)")
    return digest


class Runner:
    def __init__(self, config: RunConfig, root: str | Path, progress: Progress | None = None):
        self.config, self.root = config, Path(root)
        self.progress = progress or (lambda *a: None)
        self.done = 0

    # -- set-up ----------------------------------------------------------------------------
    def open(self) -> None:
        """Check the config against an earlier start, prepare the data if needed, check
        everything the config implies against the data, then write ``config.json``. Called
        with the directory claimed (``run``), or in a worker of a run that holds it."""
        c = self.config
        # The KB format too: cells and cached KBs of an older layout cannot be resumed.
        resolved = c.model_dump(mode="json", exclude={"quick"}) | {"kb_format": FORMAT}
        stored_path = self.root / "config.json"
        stored = read_json(stored_path, "run config") if stored_path.exists() else None
        if stored is not None and not isinstance(stored, dict):
            raise FinedError(f"{stored_path}: not a valid run config (not a JSON object)")
        if (
            stored is not None
            and {k: v for k, v in stored.items() if k != "data_fingerprint"} != resolved
        ):
            raise FinedError(
                f"{self.root} holds a run with a different config "
                "(choose another --out, or --restart to discard it)"
            )
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
        self.default_kb_bytes = kb_bytes(
            KnowledgeBase(fmap, KBConfig.model_validate(c.kb), self.s - 1)
        )
        kb_keys = {
            (self._kb_key(spec), seed) for spec in c.strategies if spec.uses_kb for seed in c.seeds
        }
        cells = len(c.seeds) * len(c.models) * (1 + len(c.strategies) * len(self.steps))
        self.total = cells + len(kb_keys)
        if stored is None:
            atomic_write_json(stored_path, resolved)

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
            check_l0_ramp(kb_config, c.kb_train_config(), kb_rows)
            tokens = c.adaptor_config(spec).tokens
            for model in c.models:
                self.base_model(model, tokens)

    def _store(self) -> PeriodStore:
        data = self.config.data
        if data.prepared is not None:
            return PeriodStore(data.prepared)
        directory = self.root / "data"
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
        settings = self.config.model_settings.get(model, {})
        return build_model(model, self.data.feature_map, settings, knowledge_tokens=tokens)

    def _kb_key(self, spec: StrategySpec) -> str:
        blob = json.dumps(self.config.kb_config(spec).model_dump(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def knowledge_base(
        self, spec: StrategySpec, seed: int, through: int | None = None
    ) -> KnowledgeBase:
        """The KB of periods 0..``through`` (default: the first s) for this variant and seed,
        built once, then loaded."""
        from fined.train.kb_builder import build_knowledge_base

        through = self.s - 1 if through is None else through
        name = f"{self._kb_key(spec)}-seed{seed}" + (f"-to{through}" if through >= self.s else "")
        directory = self.root / "kb" / name
        # Chains of the same seed in other worker processes (--jobs) may need it at once.
        with exclusive(self.root / "kb" / f".{name}.lock"):
            if not (directory / "kb.json").is_file():
                label = f"knowledge base {spec.label} seed {seed} through {through}"
                self.progress(self.done, self.total, label, "")
                config = self.config.kb_config(spec)
                train = self.config.kb_train_config(seed=seed, progress=False)
                periods = list(range(through + 1))
                build_knowledge_base(self.store, periods, config, train, directory, resume=True)
                shutil.rmtree(directory / "checkpoints", ignore_errors=True)
                if through < self.s:  # rebuilt KBs are part of their cell, not counted apart
                    self._tick(label, "built")
        kb, _ = load_kb(directory, self.data.feature_map)
        return kb

    def _evaluate(self, net: nn.Module, t: int) -> tuple[dict[str, float], dict[str, float]]:
        """Test metrics on P_{t+1} and the AUC on the held-out slice of every P_i, i <= t."""
        trainer = Trainer(net, self.config.train_config(progress=False))
        test = trainer.evaluate(self.data.test(t + 1, t))
        forgetting = {
            str(i): trainer.evaluate(self.data.holdout([i], t))["auc"] for i in range(t + 1)
        }
        return test, forgetting

    # -- the warm-up model ------------------------------------------------------------------
    def warmup(self, model: str, seed: int) -> dict[str, Any]:
        directory = self.root / "warmup" / model / f"seed{seed}"
        label = f"warm-up {model} seed {seed}"
        if (directory / RECORD).is_file():
            self._tick(label)
            return read_json(directory / RECORD, "warm-up record")
        t = self.s - 1
        past = list(range(self.s))
        seed_everything(step_seed(seed, t))
        net = self.base_model(model)
        trainer = Trainer(net, self.config.train_config(seed=step_seed(seed, t), progress=False))
        fit = trainer.fit(
            self.data.train(past, t), self.data.holdout(past, t), directory / "train", resume=True
        )
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
        self._finish(directory, net, record)
        self._tick(label, f"valid AUC {fit.best.get('auc', float('nan')):.4f}")
        return record

    def _finish(self, directory: Path, net: nn.Module, record: dict[str, Any]) -> None:
        record["weights_sha256"] = save_weights(directory / WEIGHTS, net)
        atomic_write_json(directory / RECORD, record)  # last: marks the cell done
        shutil.rmtree(directory / "train", ignore_errors=True)

    # -- one strategy's chain over the periods -----------------------------------------------
    def chain(self, spec: StrategySpec, model: str, seed: int) -> list[dict[str, Any]]:
        strategy = STRATEGIES[spec.kind](spec, self, model, seed)
        cell = self.root / "cells" / spec.label / model / f"seed{seed}"
        warmup = self.root / "warmup" / model / f"seed{seed}"
        done = read_json(warmup / RECORD, "warm-up record")
        previous = read_weights(warmup / WEIGHTS, _digest(warmup / RECORD, done))
        from_warmup = True
        records = []
        fmap = self.data.feature_map
        for t in self.steps:
            directory = cell / f"t{t}"
            label = f"{spec.label} {model} seed {seed} {fmap.periods[t].name}"
            if (directory / RECORD).is_file():
                records.append(read_json(directory / RECORD, "cell record"))
                self._tick(label)
                continue
            if records:  # the model of t-1, as saved (a resumed run reads the same file)
                before = cell / f"t{records[-1]['t']}"
                previous = read_weights(before / WEIGHTS, _digest(before / RECORD, records[-1]))
                from_warmup = False
            self.progress(self.done, self.total, label, "")
            seed_everything(step_seed(seed, t))  # the initial weights of a fresh model
            net = strategy.build(t, previous, from_warmup)
            config = self.config.train_config(seed=step_seed(seed, t), progress=False)
            rows = strategy.rows(t)
            fit = Trainer(strategy.trainable(net), config).fit(
                rows, self.data.holdout([t], t), directory / "train", resume=True
            )
            net.eval()
            test, forgetting = self._evaluate(net, t)
            kept = strategy.bytes_kept(net, t)
            strategy.after_period(net, t)  # the streaming KB absorbs P_t (used from t + 1)
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
                "bytes_kept": kept,
                "forgetting": forgetting,
            }
            self._finish(directory, net, record)
            if records:  # only the newest model is needed to go on (and to resume)
                (cell / f"t{records[-1]['t']}" / WEIGHTS).unlink(missing_ok=True)
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
        kb = self.knowledge_base(spec, self.config.seeds[0])
        past = list(range(self.s))
        gate_heatmap(inspect_kb(kb, self.data.holdout(past, self.s - 1)), path)
        return True

    # -- everything -------------------------------------------------------------------------
    def run(self, jobs: int = 1, restart: bool = False) -> Any:
        """Claim and lock the run directory (``restart``: first delete what an earlier run
        wrote there), run or finish every cell, write the outputs; returns the summary. With
        ``jobs`` > 1 the (seed, model) chains run in worker processes first; the pass below
        then reads what they wrote, as when a run resumes."""
        from fined.protocol.outputs import write_outputs

        with owned_directory(self.root, COMMAND, restart=ENTRIES if restart else None):
            self.open()
            result = self._cells(jobs)
            periods = [p.name for p in self.data.feature_map.periods]
            summary = write_outputs(self.root, self.config, result, periods, self.s)
            self.kb_figure(self.root / "figures" / "kb_patterns.png")
        return summary

    def _cells(self, jobs: int) -> dict[str, Any]:
        c = self.config
        started = time.perf_counter()
        if jobs > 1:
            from fined.protocol.parallel import run_in_workers

            run_in_workers(self, jobs)
            self.done = 0
        warmups: dict[tuple[str, int], dict[str, Any]] = {}
        records: list[dict[str, Any]] = []
        for seed in c.seeds:
            for model in c.models:
                warmups[(model, seed)] = self.warmup(model, seed)
                for spec in c.strategies:
                    records.extend(self.chain(spec, model, seed))
        return {"records": records, "warmups": warmups, "seconds": time.perf_counter() - started}
