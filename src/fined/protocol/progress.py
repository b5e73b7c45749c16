"""How far a ``fined run`` has got: its steps (every cell, every KB built) done of the total,
passed on to whoever shows them (the command line's bar, a parent process)."""

from __future__ import annotations

from collections.abc import Callable

Report = Callable[[int, int, str, str], None]  # (done, total, current step, last result)


class RunProgress:
    def __init__(self, report: Report | None = None) -> None:
        self.report: Report = report or (lambda *a: None)
        self.done = 0
        self.total = 0  # known once the run is opened (0 until then)

    def show(self, current: str, result: str = "") -> None:
        """The step now under way (or just ended, with its ``result``)."""
        self.report(self.done, self.total, current, result)

    def tick(self, current: str, result: str = "") -> None:
        """A step has ended."""
        self.advance(1, current, result)

    def advance(self, steps: int, current: str, result: str = "") -> None:
        """``steps`` steps have ended (a worker's, relayed)."""
        self.done += steps
        self.show(current, result)
