"""The search: trials asked of a sampler, run, kept, and the best one chosen on validation.

The search directory (claimed and locked like every output) holds ``search.json`` (what is
searched; a resumed search must match it), ``trials/NNN.json`` (a trial's settings, written
before it runs, then its validation figures) beside ``trials/NNN/`` (its training or run
directory), ``trials.csv`` and ``best.yaml``. A killed search, started again, keeps its
finished trials, resumes the one cut short from its checkpoints and asks the sampler for
the rest; each trial's sampler is seeded by the trial's number and sees the trials finished
before its round, so the settings asked do not depend on how far a previous process got. A
trial whose training diverges is a result, as in Optuna: recorded as failed (``error`` in its
record, ``state`` and ``error`` in ``trials.csv``), told to the sampler as failed, and the
search goes on; only a search whose every trial failed ends in an error.

With ``jobs`` > 1 the trials of a round run in worker processes that split the machine's
threads; a round's trials are asked before any of them runs.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fined.errors import FinedError, TrainingDiverged
from fined.io import atomic_write_json, atomic_write_text, read_json
from fined.outputs import owned_directory
from fined.tune.space import Dimension, grid
from fined.workers import worker_pool

COMMAND = "tune"
Sampler = Literal["grid", "random", "tpe"]
Objective = Callable[[dict[str, Any], Path], dict[str, float]]


@dataclass
class Trial:
    number: int
    settings: dict[str, Any]
    metrics: dict[str, float] | None = None  # None: not finished, or failed
    seconds: float = 0.0
    error: str | None = None  # why it failed (its training diverged): a result too

    @property
    def finished(self) -> bool:
        return self.metrics is not None or self.error is not None


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
    for t in finished:  # a failed trial is told as one, as Optuna records it
        value = None if t.metrics is None else t.metrics["objective"]
        states = optuna.trial.TrialState
        done = states.FAIL if value is None else states.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params=_encode(space, t.settings), distributions=dists, value=value, state=done,
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
            if not trial.finished:
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
        with worker_pool(len(trials), self.out) as pool:  # they die with this process
            futures = [
                pool.submit(_in_worker, self.objective, t.settings, self._dir(t), threads)
                for t in trials
            ]
            results = [f.result() for f in futures]
        return [self._record(t, *result) for t, result in zip(trials, results, strict=True)]

    def _dir(self, trial: Trial) -> Path:
        return self.out / "trials" / f"{trial.number:03d}"

    def _run_one(self, trial: Trial) -> Trial:
        self.log(f"trial {trial.number}: {format_settings(trial.settings)}")
        return self._record(trial, *_timed(self.objective, trial.settings, self._dir(trial)))

    def _record(
        self, trial: Trial, metrics: dict[str, float] | None, seconds: float, error: str | None
    ) -> Trial:
        trial.metrics, trial.seconds, trial.error = metrics, seconds, error
        atomic_write_json(self._path(trial.number), asdict(trial))
        if metrics is None:
            self.log(f"trial {trial.number} failed: {error} ({seconds:.0f} s)")
            return trial
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "objective")
        self.log(f"trial {trial.number} done: {shown} ({seconds:.0f} s)")
        return trial

    def _write_table(self, trials: list[Trial]) -> None:
        """``trials.csv``: a row per trial (settings, state, validation figures, seconds,
        and why it failed); a failed trial's figures are empty."""
        keys = [d.key for d in self.space]
        metric_keys = metric_names(trials)
        rows = [["trial", *keys, "state", *metric_keys, "seconds", "error"]]
        for t in trials:
            metrics = t.metrics or {}
            rows.append([str(t.number), *(_text(t.settings[k]) for k in keys),
                         "failed" if t.metrics is None else "complete",
                         *(f"{metrics[k]:.6f}" if k in metrics else "" for k in metric_keys),
                         f"{t.seconds:.1f}", t.error or ""])  # fmt: skip
        sink = io.StringIO()
        csv.writer(sink, lineterminator="\n").writerows(rows)
        atomic_write_text(self.out / "trials.csv", sink.getvalue())


def metric_names(trials: list[Trial]) -> list[str]:
    """The validation figures the trials report (the objective aside)."""
    done = next((t.metrics for t in trials if t.metrics is not None), {})
    return [k for k in done if k != "objective"]


def best_trial(trials: list[Trial]) -> Trial:
    """The best validation figure of the trials that finished; ties to the earliest trial.
    Every trial failed: a FinedError saying why the first did."""
    complete = [t for t in trials if t.metrics is not None]
    if not complete:
        first = trials[0]
        raise FinedError(
            f"every trial failed ({len(trials)}); trial {first.number} "
            f"({format_settings(first.settings)}): {first.error}"
        )
    return max(complete, key=lambda t: (t.metrics["objective"], -t.number))  # type: ignore[index]


def format_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in settings.items())


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    text = _text(value)
    return f'"{text}"' if "," in text else text


def json_round_trip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


def _timed(
    objective: Objective, settings: dict[str, Any], directory: Path
) -> tuple[dict[str, float] | None, float, str | None]:
    """The trial's figures, seconds and, where its training diverged, why (a result of its
    settings, as Optuna counts a failed trial: the search goes on); any other error ends
    the search (a bad file or a full disk is not a trial's result)."""
    started = time.perf_counter()
    try:
        metrics: dict[str, float] | None = objective(settings, directory)
        error = None
    except TrainingDiverged as err:
        metrics, error = None, str(err)
    return metrics, time.perf_counter() - started, error


def _in_worker(
    objective: Objective, settings: dict[str, Any], directory: Path, threads: int
) -> tuple[dict[str, float] | None, float, str | None]:
    torch.set_num_threads(threads)
    return _timed(objective, settings, directory)
