"""The search: trials asked of a sampler, run, kept, and the best one chosen on validation.

The search directory (claimed and locked like every output) holds ``search.json`` (what is
searched; a resumed search must match it), ``trials/NNN.json`` (a trial's settings, written
before it runs, then its validation figures) beside ``trials/NNN/`` (its training or run
directory), ``trials.csv`` and ``best.yaml``. A killed search, started again, keeps its
finished trials, resumes the one cut short from its checkpoints and asks the sampler for
the rest; each trial's sampler is seeded by the trial's number and sees the trials finished
before its round, so the settings asked do not depend on how far a previous process got.

With ``jobs`` > 1 the trials of a round run in worker processes that split the machine's
threads; a round's trials are asked before any of them runs.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fined.errors import FinedError
from fined.io import atomic_write_json, atomic_write_text, read_json
from fined.outputs import owned_directory
from fined.tune.space import Dimension, grid

COMMAND = "tune"
Sampler = Literal["grid", "random", "tpe"]
Objective = Callable[[dict[str, Any], Path], dict[str, float]]


@dataclass
class Trial:
    number: int
    settings: dict[str, Any]
    metrics: dict[str, float] | None = None  # None: not finished
    seconds: float = 0.0


def _distributions(space: list[Dimension]) -> dict[str, Any]:
    import optuna

    out: dict[str, Any] = {}
    for d in space:
        if d.kind == "choice":  # by index: choices may be lists, which Optuna cannot hold
            out[d.key] = optuna.distributions.CategoricalDistribution(list(range(len(d.values))))
        elif d.kind == "int":
            out[d.key] = optuna.distributions.IntDistribution(int(d.low), int(d.high))
        else:
            out[d.key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.kind == "log")
    return out


def _encode(space: list[Dimension], settings: dict[str, Any]) -> dict[str, Any]:
    return {d.key: d.values.index(settings[d.key]) if d.kind == "choice" else settings[d.key]
            for d in space}  # fmt: skip


def _decode(space: list[Dimension], params: dict[str, Any]) -> dict[str, Any]:
    return {d.key: d.values[params[d.key]] if d.kind == "choice" else params[d.key]
            for d in space}  # fmt: skip


def ask(
    space: list[Dimension], sampler: Sampler, seed: int, number: int, finished: list[Trial]
) -> dict[str, Any]:
    """The settings of trial ``number`` given the finished trials before it."""
    if sampler == "grid":
        combos = grid(space)
        return combos[number]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Spread by a hash: numpy's Mersenne Twister, which Optuna's samplers use, draws nearly
    # the same first values from consecutive seeds (trials 0-2 asked lr 6.03e-4, 6.16e-4,
    # 6.06e-4 and the same dropout before this).
    trial_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    chooser = (
        optuna.samplers.RandomSampler(seed=trial_seed)
        if sampler == "random"
        else optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=4)
    )
    study = optuna.create_study(direction="maximize", sampler=chooser)
    dists = _distributions(space)
    for t in finished:
        assert t.metrics is not None
        study.add_trial(optuna.trial.create_trial(
            params=_encode(space, t.settings), distributions=dists, value=t.metrics["objective"],
        ))  # fmt: skip
    return _decode(space, study.ask(dists).params)


class Search:
    def __init__(
        self,
        out: str | Path,
        objective: Objective,
        space: list[Dimension],
        sampler: Sampler,
        trials: int,
        seed: int = 1,
        jobs: int = 1,
        describe: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if sampler == "grid":
            trials = min(trials, len(grid(space)))
        if trials < 1 or jobs < 1:
            raise FinedError("--trials and --jobs must be at least 1")
        self.out, self.objective, self.space = Path(out), objective, space
        self.sampler, self.trials, self.seed, self.jobs = sampler, trials, seed, jobs
        self.log = log or (lambda line: None)
        self.definition = {
            "sampler": sampler, "seed": seed, "space": [asdict(d) for d in space],
            "objective": type(objective).__name__, "job": describe or {},
        }  # fmt: skip

    def run(self) -> list[Trial]:
        with owned_directory(self.out, COMMAND):
            self._check_definition()
            done = self._finished()
            while len(done) < self.trials:
                start = len(done)
                round_ = [
                    self._trial(n, done) for n in range(start, min(start + self.jobs, self.trials))
                ]
                done += self._run_round(round_)
            self._write_table(done)
            return done

    def _check_definition(self) -> None:
        path = self.out / "search.json"
        definition = json_round_trip(self.definition)
        if path.exists():
            if read_json(path, "search definition") != definition:
                raise FinedError(
                    f"{self.out} holds another search (space, sampler, seed or job differ); "
                    "choose another --out"
                )
        else:
            atomic_write_json(path, definition)

    def _path(self, number: int) -> Path:
        return self.out / "trials" / f"{number:03d}.json"

    def _finished(self) -> list[Trial]:
        out = []
        for number in range(self.trials):
            path = self._path(number)
            if not path.exists():
                break
            trial = Trial(**read_json(path, "trial record"))
            if trial.metrics is None:
                break  # cut short: run again (it resumes from its checkpoints)
            out.append(trial)
        return out

    def _trial(self, number: int, finished: list[Trial]) -> Trial:
        """Trial ``number``: its recorded settings if it was started before, else asked."""
        path = self._path(number)
        if path.exists():
            return Trial(**read_json(path, "trial record"))
        trial = Trial(number, ask(self.space, self.sampler, self.seed, number, finished))
        atomic_write_json(path, asdict(trial))
        return trial

    def _run_round(self, trials: list[Trial]) -> list[Trial]:
        if len(trials) == 1 or self.jobs == 1:
            return [self._run_one(t) for t in trials]
        threads = max(1, torch.get_num_threads() // len(trials))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(trials), mp_context=context) as pool:
            futures = [
                pool.submit(_in_worker, self.objective, t.settings, self._dir(t), threads)
                for t in trials
            ]
            results = [f.result() for f in futures]
        return [self._record(t, metrics, seconds) for t, (metrics, seconds) in
                zip(trials, results, strict=True)]  # fmt: skip

    def _dir(self, trial: Trial) -> Path:
        return self.out / "trials" / f"{trial.number:03d}"

    def _run_one(self, trial: Trial) -> Trial:
        self.log(f"trial {trial.number}: {format_settings(trial.settings)}")
        metrics, seconds = _timed(self.objective, trial.settings, self._dir(trial))
        return self._record(trial, metrics, seconds)

    def _record(self, trial: Trial, metrics: dict[str, float], seconds: float) -> Trial:
        trial.metrics, trial.seconds = metrics, seconds
        atomic_write_json(self._path(trial.number), asdict(trial))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "objective")
        self.log(f"trial {trial.number} done: {shown} ({seconds:.0f} s)")
        return trial

    def _write_table(self, trials: list[Trial]) -> None:
        """``trials.csv``: a row per trial (settings, validation figures, seconds)."""
        keys = [d.key for d in self.space]
        metric_keys = [k for k in (trials[0].metrics or {}) if k != "objective"]
        lines = [",".join(["trial", *keys, *metric_keys, "seconds"])]
        for t in trials:
            metrics = t.metrics or {}
            values = [_cell(t.settings[k]) for k in keys]
            lines.append(",".join([str(t.number), *values,
                                   *(f"{metrics[k]:.6f}" for k in metric_keys),
                                   f"{t.seconds:.1f}"]))  # fmt: skip
        atomic_write_text(self.out / "trials.csv", "\n".join(lines) + "\n")


def best_trial(trials: list[Trial]) -> Trial:
    """The best validation figure; ties to the earliest trial."""
    return max(trials, key=lambda t: ((t.metrics or {}).get("objective", -math.inf), -t.number))


def format_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in settings.items())


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'"{text}"' if "," in text else text


def json_round_trip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


def _timed(objective: Objective, settings: dict[str, Any], directory: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    metrics = objective(settings, directory)
    return metrics, time.perf_counter() - started


def _in_worker(
    objective: Objective, settings: dict[str, Any], directory: Path, threads: int
) -> tuple[dict, float]:
    torch.set_num_threads(threads)
    return _timed(objective, settings, directory)
