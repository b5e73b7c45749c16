"""The ``fined`` command: the Typer app, shared helpers and the entry point.

Every error a user can cause ends in one line ``error: ...`` and exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
import yaml
from rich.console import Console

from fined.errors import FinedError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="CTR prediction on drifting data, with a parametric knowledge base of the past (FINED).",
)
# Tables stay readable when the output is piped or logged (rich would default to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def parse_pairs(pairs: list[str], flag: str) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars (numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FinedError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def load_settings(path: Path | None, sets: list[str]) -> tuple[dict, dict]:
    """A component's settings and the trainer's: a YAML file (the component's keys at the top
    level, the trainer's under ``train:``), then ``--set key=value`` (``train.key=value``)."""
    from fined.data.schema import load_yaml

    own: dict = {}
    trainer: dict = {}
    if path is not None:
        doc = load_yaml(path) or {}
        if not isinstance(doc, dict):
            raise FinedError(f"{path}: expected a mapping of settings")
        trainer = dict(doc.pop("train", None) or {})
        own = doc
    for key, value in parse_pairs(sets, "--set").items():
        (trainer if key.startswith("train.") else own)[key.removeprefix("train.")] = value
    return own, trainer


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="fined")  # standalone mode: exits through SystemExit
    except FinedError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
