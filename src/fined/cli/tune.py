"""``fined tune``: search settings of a training job or of a strategy, on validation only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fined.cli.app import (
    DEVICE_HELP,
    RUN_DEVICE_HELP,
    app,
    console,
    load_settings,
    parse_pairs,
    run_device,
)
from fined.errors import FinedError

tune_app = typer.Typer(no_args_is_help=True, help="Search settings, choosing on validation only.")
app.add_typer(tune_app, name="tune")

SPACE = Annotated[Path, typer.Option(help="The search space (YAML: --set keys -> choices).")]
TRIALS = Annotated[int, typer.Option(help="Trials (a grid: at most its size).")]
SAMPLER = Annotated[str, typer.Option(help="grid | random | tpe.")]
JOBS = Annotated[int, typer.Option(help="Trials at once, in processes that split the threads.")]


def _sampler(name: str) -> str:
    if name not in ("grid", "random", "tpe"):
        raise FinedError(f"--sampler {name!r}: expected grid, random or tpe")
    return name


def _check_space(objective: Any, dims: list, space: Path) -> None:
    """The job's inputs (its data, a KB: digests and sizes; a run's steps) and every value
    the space file gives a key, each on the base settings, are checked before the search
    claims --out: a misspelt key, a bad value or a tampered file is named, and nothing is
    left that blocks the corrected rerun."""
    objective.check_inputs()
    objective.check({}, "the base settings (--config, --set)")
    for dim in dims:
        for value in dim.grid():
            objective.check({dim.key: value}, f"{space}: {dim.key}={value!r}")


def _table(title: str, trials, keys: list[str], best: int) -> Table:
    from fined.tune.search import _cell, metric_names

    table = Table(title=title)
    metrics = metric_names(trials)
    for col in ["trial", *keys, *metrics, "s"]:
        table.add_column(col, justify="left" if col in keys else "right")
    for t in trials:
        mark = " *" if t.number == best else ""
        shown = ([f"{t.metrics[k]:.4f}" for k in metrics] if t.metrics is not None
                 else ["failed"] * len(metrics))  # fmt: skip
        table.add_row(f"{t.number}{mark}", *(_cell(t.settings[k]) for k in keys), *shown,
                      f"{t.seconds:.0f}")  # fmt: skip
    table.caption = "*: the trial chosen (on validation); failed: its training diverged"
    return table


@tune_app.command("train")
def tune_train(
    data: Annotated[Path, typer.Option(help="A prepared dataset directory.")],
    model: Annotated[str, typer.Option(help="Model name.")],
    train_periods: Annotated[str, typer.Option(help="Training periods, e.g. 0:5.")],
    space: SPACE,
    out: Annotated[Path, typer.Option(help="Search directory (trials, table, best.yaml).")],
    valid: Annotated[str, typer.Option(help="holdout | tail[:FRACTION] | periods.")] = "holdout",
    test: Annotated[
        str | None, typer.Option(help="Test periods: scored once, for the chosen trial only.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Base model YAML (train: keys).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Base KEY=VALUE.")] = [],  # noqa: B006
    kb: Annotated[Path | None, typer.Option(help="Feed knowledge from this KB.")] = None,
    trials: TRIALS = 12,
    sampler: SAMPLER = "tpe",
    seed: Annotated[int, typer.Option(help="The sampler's seed.")] = 1,
    jobs: JOBS = 1,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Search a training job's settings: each trial trains on the training periods and is
    judged by its best epoch's validation AUC; the test periods, if given, are scored once,
    with the chosen trial's model."""
    import yaml

    from fined.devices import resolve_device
    from fined.io import atomic_write_json, atomic_write_text
    from fined.train.predict import load_saved
    from fined.train.selection import parse_periods
    from fined.train.trainer import Trainer
    from fined.tune.objectives import TrainObjective
    from fined.tune.search import Search, best_trial, format_settings
    from fined.tune.space import load_space

    dims = load_space(space)
    settings, trainer = load_settings(config, set_)
    objective = TrainObjective(str(data), model, train_periods, valid, settings, trainer,
                               str(kb) if kb else None, device=device)  # fmt: skip
    _check_space(objective, dims, space)
    describe = {"data": str(data), "model": model, "train_periods": train_periods,
                "valid": valid, "settings": settings, "train": trainer,
                "kb": str(kb) if kb else None}  # fmt: skip
    search = Search(out, objective, dims, _sampler(sampler), trials, seed, jobs, describe,  # type: ignore[arg-type]
                    log=console.print)  # fmt: skip
    done = search.run()
    best = best_trial(done)
    own, train_over = objective.layers(best.settings)
    train_over.pop("progress", None)
    atomic_write_text(out / "best.yaml", yaml.safe_dump({**own, "train": train_over}))
    console.print(_table(f"fined tune: {model}, {len(done)} trials", done, [d.key for d in dims],
                         best.number))  # fmt: skip
    result: dict[str, Any] = {
        "trial": best.number,
        "settings": best.settings,
        "valid": best.metrics,
    }
    if test:
        saved = load_saved(out / "trials" / f"{best.number:03d}", data)
        periods = parse_periods(test, saved.store.feature_map)
        known = saved.known_through
        if min(periods) <= known:
            raise FinedError("--test periods must come after the training periods")
        trainer_ = Trainer(saved.model, device=resolve_device(device))
        result["test"] = trainer_.evaluate(saved.store.load(periods, known_through=known))
        console.print(f"chosen trial {best.number} ({format_settings(best.settings)}): "
                      f"test AUC {result['test']['auc']:.4f} (scored once)")  # fmt: skip
    atomic_write_json(out / "best.json", result)
    console.print(f"wrote {out}/trials.csv, best.yaml (fined train --config {out}/best.yaml)")


@tune_app.command("run")
def tune_run(
    config: Annotated[Path, typer.Argument(help="A run config (YAML).")],
    strategy: Annotated[str, typer.Option(help="The label of the strategy to tune.")],
    space: SPACE,
    out: Annotated[Path, typer.Option(help="Search directory (trials, table, best.yaml).")],
    quick: Annotated[bool, typer.Option("--quick", help="Apply the config's quick:.")] = False,
    set_: Annotated[list[str], typer.Option("--set", help="Base a.b=VALUE.")] = [],  # noqa: B006
    trials: TRIALS = 12,
    sampler: SAMPLER = "tpe",
    seed: Annotated[int, typer.Option(help="The sampler's seed.")] = 1,
    jobs: JOBS = 1,
    device: Annotated[str | None, typer.Option(help=RUN_DEVICE_HELP)] = None,
) -> None:
    """Search a strategy's settings (strategy.KEY keys) or the run's (train.lr, ...):
    each trial runs the protocol with that strategy alone, judged by its forward AUC (how
    each of its models of t-1 scores P_t, over every step but the first; the last period
    plays no part). best.yaml is the run config to run."""
    import yaml

    from fined.config import parse_model
    from fined.io import atomic_write_text
    from fined.protocol.config import RunConfig
    from fined.tune.objectives import RunObjective
    from fined.tune.search import Search, best_trial
    from fined.tune.space import load_space

    dims = load_space(space)
    sets = parse_pairs(set_, "--set")
    objective = RunObjective(str(config), strategy, quick, sets, device)
    base = parse_model(RunConfig, objective.document({}), str(config))  # must validate now
    run_device(base.device, device, config, base.train.cuda_graphs)
    _check_space(objective, dims, space)
    describe = {"config": str(config), "strategy": strategy, "quick": quick, "sets": sets}
    search = Search(out, objective, dims, _sampler(sampler), trials, seed, jobs, describe,  # type: ignore[arg-type]
                    log=console.print)  # fmt: skip
    done = search.run()
    best = best_trial(done)
    atomic_write_text(out / "best.yaml", yaml.safe_dump(objective.document(best.settings)))
    console.print(_table(f"fined tune: {strategy}, {len(done)} trials", done,
                         [d.key for d in dims], best.number))  # fmt: skip
    console.print(f"wrote {out}/trials.csv, best.yaml (fined run {out}/best.yaml)")
