"""``fined run CONFIG.yaml``: the continual protocol, every strategy, a report at the end."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fined.cli.app import RUN_DEVICE_HELP, app, console, err_console, parse_pairs, run_device
from fined.errors import FinedError


class _Reporter:
    """Cells done, the current cell and an ETA: a live bar on a terminal, lines otherwise."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.bar: Any = None  # a rich Progress, started on the first report
        self.started = time.perf_counter()
        self.first_done: int | None = None

    def __call__(self, done: int, total: int, current: str, result: str) -> None:
        if self.live:
            self._bar(done, total, current, result)
        elif result or not total:
            said = f": {result}" if result else ""
            console.print(f"[{done}/{total}] {current}{said}{self._eta(done, total)}")

    def _eta(self, done: int, total: int) -> str:
        if self.first_done is None:  # cells finished by an earlier process say nothing of speed
            self.first_done = done
            self.started = time.perf_counter()
            return ""
        rate = (time.perf_counter() - self.started) / max(done - self.first_done, 1)
        return f" (ETA {rate * (total - done) / 60:.1f} min)" if total else ""

    def _bar(self, done: int, total: int, current: str, result: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("{task.fields[last]}"), console=console,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(current, total=total or None, last="")
        fields = {"description": current, "total": total or None, "completed": done}
        if result:
            fields["last"] = f"last: {result}"
        self.bar.update(self.task, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command("run")
def run(
    config: Annotated[
        Path, typer.Argument(help="A run config (YAML), e.g. configs/movielens100k.yaml.")
    ],
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/NAME).")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Apply the config's `quick:` overrides.")
    ] = False,
    set_: Annotated[
        list[str], typer.Option("--set", help="Override a config key: a.b=VALUE.")
    ] = [],  # noqa: B006
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Discard an earlier run in OUT first (only what it wrote)."),
    ] = False,
    device: Annotated[str | None, typer.Option(help=RUN_DEVICE_HELP)] = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", help="Run the (seed, model) chains in N processes (threads split)."),
    ] = 1,
) -> None:
    """The continual protocol: KB and warm-up on the first periods, then period by period
    train, select on the held-out slice, test on the next period, for every strategy, model
    and seed. Killed runs continue where they stopped when started again."""
    from fined.protocol.config import load_run_config
    from fined.protocol.runner import Runner

    if jobs < 1:
        raise FinedError(f"--jobs {jobs}: expected at least 1")
    cfg = load_run_config(config, quick=quick, sets=parse_pairs(set_, "--set"))
    run_device(cfg.device, device, config, cfg.train.cuda_graphs)
    if device is not None:
        cfg = cfg.model_copy(update={"device": device})
    root = out or Path("runs") / (cfg.name + ("-quick" if quick else ""))
    reporter = _Reporter()
    try:
        summary = Runner(cfg, root, reporter).run(jobs, restart=restart)
    except KeyboardInterrupt:
        reporter.close()  # the progress bar first, so that the line below stays visible
        err_console.print(
            f"interrupted: the same command again continues where it stopped (its work so "
            f"far is kept in {root})",
            markup=False,
            highlight=False,
        )
        raise  # exit code 130
    finally:
        reporter.close()
    console.print(_summary_table(cfg.name, summary))
    for line in validation_lines(summary):
        console.print(line)
    console.print(f"wrote {root}/report.md, results.csv, summary.csv, forgetting.csv, figures/")


def _summary_table(name: str, summary) -> Table:
    table = Table(title=f"{name}: mean over test periods, mean ± std over seeds")
    columns = ("model", "strategy", "test AUC", "RelaImpr", "LogLoss", "BWT", "held-out AUC",
               "forward AUC", "bytes kept")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "strategy") else "right")
    for r in summary.iter_rows(named=True):
        table.add_row(
            r["model"],
            r["strategy"],
            f"{r['auc_mean']:.4f} ± {r['auc_std']:.4f}",
            f"{r['relaimpr']:+.2f} %",
            f"{r['logloss_mean']:.4f}",
            f"{r['bwt_mean']:+.4f}",
            f"{r['held_out_auc_mean']:.4f}",
            f"{r['forward_auc_mean']:.4f}",
            f"{r['bytes_kept'] / 1024:,.0f} KB",
        )
    table.caption = (
        "held-out AUC: on the held-out slices of every period trained on (rewards "
        "remembering); forward AUC: each model of t-1 on P_t, every test but the last (the "
        "validation figure strategies are chosen by)"
    )
    return table


def validation_lines(summary) -> list[str]:
    """Per model: which strategy wins on validation, by how much, beside the test figures."""
    from fined.report.tables import validation_winners

    return [
        f"{w['model']}: on validation {w['best']} wins ({w['figure']} AUC +{w['margin']:.4f} over "
        f"{w['second']}); their test AUC {w['best_test']:.4f} and {w['second_test']:.4f}; "
        f"best on test: {w['test_best']}"
        for w in validation_winners(summary)
    ]
