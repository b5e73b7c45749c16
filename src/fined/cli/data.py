"""``fined data``: prepare, describe and list datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fined.cli.app import app, console, parse_pairs
from fined.errors import FinedError

data_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect datasets.")
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    config: Annotated[Path | None, typer.Argument(help="A prepare config (YAML).")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="A built-in dataset name instead of a config.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory (replaced atomically).")] = ...,  # type: ignore[assignment]  # typer's "required"
    option: Annotated[
        list[str], typer.Option("--option", "-o", help="Adapter option KEY=VALUE.")
    ] = [],  # noqa: B006
    chunk_rows: Annotated[int | None, typer.Option(help="Rows per streamed chunk.")] = None,
) -> None:
    """Encode a dataset into one Parquet file per period plus feature_map.json."""
    from fined.config import parse_model
    from fined.data.prepare import prepare
    from fined.data.schema import PrepareConfig, load_prepare_config

    if (config is None) == (dataset is None):
        raise FinedError("give either a CONFIG.yaml or --dataset NAME")
    if config is not None:
        cfg = load_prepare_config(config)
    else:
        cfg = parse_model(PrepareConfig, {"dataset": dataset}, "--dataset")
    # Re-validated with the command line's values, so that a bad --chunk-rows is named too.
    doc = cfg.model_dump(exclude_unset=True)
    doc["options"] = {**cfg.options, **parse_pairs(option, "--option")}
    if chunk_rows is not None:
        doc["chunk_rows"] = chunk_rows
    cfg = parse_model(PrepareConfig, doc, "--chunk-rows" if chunk_rows is not None else "config")

    with console.status("preparing") as status:

        def progress(stage: str, rows: int) -> None:
            status.update(
                f"{'pass 1/2: scanning' if stage == 'scan' else 'pass 2/2: encoding'} {rows:,} rows"
            )

        fmap = prepare(cfg, out, progress)
    rows = sum(p.rows for p in fmap.periods)
    skipped = "".join(
        f"; left out {n:,} row{'s' if n > 1 else ''} {why}" for why, n in fmap.skipped_rows.items()
    ) + "".join(f"; {what}: {n:,}" for what, n in fmap.source_notes.items())
    console.print(
        f"wrote {out}: {len(fmap.periods)} periods, {rows:,} rows, "
        f"{len(fmap.features)} features (fingerprint {fmap.fingerprint}){skipped}"
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
def data_datasets(
    name: Annotated[str | None, typer.Argument(help="An adapter: list its -o options.")] = None,
) -> None:
    """List the built-in dataset adapters, or one adapter's -o options."""
    from rich.table import Table

    from fined.config import type_name
    from fined.data.datasets import dataset_names, dataset_options, dataset_summary

    if name is None:
        for known in dataset_names():
            console.print(f"{known}: {dataset_summary(known)}", highlight=False)
        console.print("`fined data datasets NAME` lists an adapter's -o options")
        return
    console.print(f"{name}: {dataset_summary(name)}", highlight=False)
    options = dataset_options(name)
    if options is None:
        console.print("(no -o options; see docs/reference.md)")
        return
    table = Table(title=f"fined data prepare --dataset {name} -o KEY=VALUE")
    for col in ("option", "type", "default"):
        table.add_column(col)
    for key, field in options.model_fields.items():
        default = (
            "(required)"
            if field.is_required()
            else repr(field.get_default(call_default_factory=True))
        )
        table.add_row(key, type_name(field.annotation), default)
    console.print(table)
