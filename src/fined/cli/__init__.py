"""The ``fined`` command line (``fined --help``)."""

from fined.cli import continual, data, kb, train, tune  # noqa: F401  (commands register themselves)
from fined.cli.app import app, main, run

__all__ = ["app", "main", "run"]
