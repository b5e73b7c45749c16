"""A rich progress bar for one epoch, with the running loss: on an interactive terminal only
(logs and pipes get nothing from it)."""

from __future__ import annotations

import sys

from fined.train.step import EpochSums


class EpochProgress:
    """A rich progress bar with the running loss, only on an interactive terminal."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.label = total, label

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, loss=float("nan"), terms="")
        return self

    def advance(self, sums: EpochSums) -> None:
        """One step done; the running means are read from the device only when shown."""
        if self.enabled:
            loss, terms = sums.means()
            text = " ".join(f"{k} {v:.4g}" for k, v in terms.items())
            self.bar.update(self.task, advance=1, loss=loss, terms=text)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
