"""The ``fined`` command.

Every error a user can cause ends in one line ``error: ...`` and exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from fined.errors import FinedError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help=__doc__.splitlines()[0],
)
data_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect datasets.")
app.add_typer(data_app, name="data")
# Tables stay readable when the output is piped or logged (rich would default to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as YAML scalars (numbers, booleans, lists)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FinedError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


@data_app.command("prepare")
def data_prepare(
    config: Annotated[Path | None, typer.Argument(help="A prepare config (YAML).")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="A built-in dataset name instead of a config.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")] = ...,
    option: Annotated[
        list[str], typer.Option("--option", "-o", help="Adapter option KEY=VALUE.")
    ] = [],  # noqa: B006
    chunk_rows: Annotated[int | None, typer.Option(help="Rows per streamed chunk.")] = None,
) -> None:
    """Encode a dataset into one Parquet file per period plus feature_map.json."""
    from fined.data.prepare import prepare
    from fined.data.schema import PrepareConfig, load_prepare_config, parse_model

    if (config is None) == (dataset is None):
        raise FinedError("give either a CONFIG.yaml or --dataset NAME")
    if config is not None:
        cfg = load_prepare_config(config)
    else:
        cfg = parse_model(PrepareConfig, {"dataset": dataset}, "--dataset")
    cfg.options.update(_parse_options(option))
    if chunk_rows is not None:
        cfg.chunk_rows = chunk_rows

    with console.status("preparing") as status:

        def progress(stage: str, rows: int) -> None:
            status.update(
                f"{'pass 1/2: scanning' if stage == 'scan' else 'pass 2/2: encoding'} {rows:,} rows"
            )

        fmap = prepare(cfg, out, progress)
    rows = sum(p.rows for p in fmap.periods)
    console.print(
        f"wrote {out}: {len(fmap.periods)} periods, {rows:,} rows, "
        f"{len(fmap.features)} features (fingerprint {fmap.fingerprint})"
    )


@data_app.command("describe")
def data_describe(directory: Annotated[Path, typer.Argument(help="A prepared dataset.")]) -> None:
    """Periods, rows, CTR, vocabulary sizes and the share of new ids per period."""
    from fined.data.describe import feature_table, period_table
    from fined.data.feature_map import FeatureMap

    fmap = FeatureMap.load(directory)
    console.print(period_table(fmap))
    console.print(feature_table(fmap))


@data_app.command("datasets")
def data_datasets() -> None:
    """List the built-in dataset adapters."""
    from fined.data.datasets import dataset_names

    for name in dataset_names():
        console.print(name)


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


if __name__ == "__main__":
    run()
