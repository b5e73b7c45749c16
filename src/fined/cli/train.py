"""``fined train``, ``fined evaluate`` and ``fined predict``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.table import Table
from rich.text import Text

from fined.cli.app import DEVICE_HELP, app, console, err_console, launch_workers, load_settings
from fined.errors import FinedError


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    for col in ("set", "rows", "AUC", "gAUC", "LogLoss"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name, m in rows.items():
        table.add_row(
            name, f"{int(m['rows']):,}", _fmt(m["auc"]), _fmt(m.get("gauc")), _fmt(m["logloss"])
        )
    return table


@app.command("train")
def train(
    data: Annotated[Path, typer.Option(help="A prepared dataset directory.")],
    model: Annotated[
        str, typer.Option(help="Model name: deepfm, dcn, pnn, xdeepfm, autoint, din.")
    ],
    train_periods: Annotated[
        str, typer.Option(help="Training periods, e.g. 0:5 or 1997-09:1998-02.")
    ],
    out: Annotated[Path, typer.Option(help="Run directory (model, checkpoints, metrics).")],
    valid: Annotated[str, typer.Option(help="holdout | tail[:FRACTION] | periods.")] = "holdout",
    test: Annotated[
        str | None, typer.Option(help="Test periods (after the training ones).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Model YAML (trainer keys under train:).")
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", help="Override KEY=VALUE (train.KEY for the trainer).")
    ] = [],  # noqa: B006
    seed: Annotated[int | None, typer.Option(help="Random seed (train.seed).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a stopped run in OUT.")
    ] = False,
    kb: Annotated[
        Path | None, typer.Option(help="Feed knowledge from this KB (FINED stage 2).")
    ] = None,
    kb_finetune: Annotated[
        float | None, typer.Option(help="Fine-tune the KB at this rate.")
    ] = None,
    forward_check: Annotated[
        bool,
        typer.Option(
            help="With --kb: train the base model instead where it scores the last training "
            "period better, both trained on the periods before it."
        ),
    ] = True,
    nproc: Annotated[
        int, typer.Option(help="Train in N processes (DDP, launched with torchrun).")
    ] = 1,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Train one model; the epoch is selected on the validation set, never on the test set.

    With --kb, the model is fed instance-wise knowledge from a frozen knowledge base
    (adaptor.* keys of --set tune the adaptor)."""
    from fined import distributed
    from fined.outputs import owned_directory
    from fined.train.job import COMMAND, train_model

    if nproc < 1:
        raise FinedError(f"--nproc {nproc}: expected at least 1")
    if nproc > 1 and not distributed.launched():  # this process holds OUT for its workers
        with owned_directory(out, COMMAND):
            launch_workers(nproc, out)
        console.print(f"{nproc} workers done: {out}")
        return
    model_over, train_over = load_settings(config, set_)
    adaptor = {
        k.removeprefix("adaptor."): model_over.pop(k)
        for k in list(model_over)
        if k.startswith("adaptor.")
    }
    _name_the_source(model, config, set_)
    if kb_finetune is not None:
        adaptor["finetune_lr"] = kb_finetune
    if seed is not None:
        train_over["seed"] = seed
    try:
        job = train_model(
            data, model, train_periods, out, valid=valid, test=test, settings=model_over,
            train=train_over, kb=kb, adaptor=adaptor or None, resume=resume, log=console.print,
            device=device, forward_check=forward_check,
        )  # fmt: skip
    except KeyboardInterrupt:
        err_console.print(f"interrupted: rerun with --resume to continue from the last "
                          f"finished epoch in {out}", markup=False, highlight=False)  # fmt: skip
        raise  # exit code 130
    if distributed.context().main:
        title = f"{job.model.describe().model}: best epoch {job.fit.best_epoch}"
        console.print(_metrics_table(title, job.metrics))
    distributed.teardown()


def _name_the_source(model: str, config: Path | None, sets: list[str]) -> None:
    """A bad model or trainer setting, blamed on where it was written: the file first, then
    the command line's ``--set``."""
    from fined.config import resolve
    from fined.models.ctr_model import model_config
    from fined.train.config import TrainConfig

    def check(own: dict, trainer: dict, where: str) -> None:
        own = {k: v for k, v in own.items() if not k.startswith("adaptor.")}
        try:
            model_config(model, own)
            resolve(TrainConfig, trainer, where="train")
        except FinedError as err:
            raise FinedError(f"{where}: {err}") from None

    if config is not None:
        check(*load_settings(config, []), str(config))
    if sets:
        check(*load_settings(config, sets), f"--set {' '.join(sets)}")


@app.command("evaluate")
def evaluate(
    run: Annotated[Path, typer.Option(help="A run directory written by `fined train`.")],
    data: Annotated[Path, typer.Option(help="The prepared dataset it was trained on.")],
    periods: Annotated[str, typer.Option(help="Periods to evaluate, e.g. 6:7.")],
    part: Annotated[str, typer.Option(help="all | train | holdout rows of each period.")] = "all",
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """AUC, gAUC and LogLoss of a trained model on some periods."""
    from fined.data.loader import Part
    from fined.devices import resolve_device
    from fined.train.predict import load_saved
    from fined.train.selection import parse_periods
    from fined.train.trainer import Trainer

    if part not in ("all", "train", "holdout"):
        raise FinedError(f"--part {part!r}: expected all, train or holdout")
    saved = load_saved(run, data)
    store, meta = saved.store, saved.meta
    chosen = parse_periods(periods, store.feature_map)
    seen = sorted(set(chosen) & set(meta.get("train_periods") or []))
    if seen:
        names = ", ".join(store.feature_map.periods[p].name for p in seen)
        err_console.print(
            Text.assemble(("warning:", "bold yellow"), f" the model was trained on {names}: "
                          "scores there are not a test of it"), soft_wrap=True,
        )  # fmt: skip
    trainer = Trainer(saved.model, device=resolve_device(device))
    rows = store.load(chosen, cast(Part, part), known_through=saved.known_through)  # checked
    metrics = trainer.evaluate(rows)
    console.print(_metrics_table(f"{meta['model']} on periods {periods}", {part: metrics}))
    console.print(json.dumps({k: v for k, v in metrics.items()}))


@app.command("predict")
def predict(
    run: Annotated[Path, typer.Option(help="A run directory written by `fined train`.")],
    data: Annotated[Path, typer.Option(help="The prepared dataset it was trained on.")],
    out: Annotated[Path, typer.Option(help="Scores file: .csv or .parquet.")],
    periods: Annotated[
        str | None, typer.Option(help="Periods of the prepared dataset to score.")
    ] = None,
    rows: Annotated[
        Path | None,
        typer.Option(
            help="Or raw rows to score: a CSV or Parquet file with the log's own column names."
        ),
    ] = None,
    columns: Annotated[
        str,
        typer.Option(
            help="Also write these, comma-separated: with --periods categorical features (raw "
            "ids) and `row`; with --rows any column of the file."
        ),
    ] = "",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Click probabilities for every row of some periods, or of a file of raw rows, to CSV or
    Parquet; --columns passes raw ids or columns (and "row", the row's place in its period
    or file) through, to join back."""
    from fined.outputs import check_output_file, record_written
    from fined.train.predict import (
        check_score_path,
        load_saved,
        predict,
        predict_rows,
        write_scores,
    )
    from fined.train.selection import parse_periods

    if (periods is None) == (rows is None):
        raise FinedError("give --periods (of the prepared dataset) or --rows (a file of raw rows)")
    check_output_file(check_score_path(out), overwrite, "--out")
    saved = load_saved(run, data)
    passed = [c.strip() for c in columns.split(",") if c.strip()]
    if rows is not None:
        scores = predict_rows(saved, rows, passed, device)
    else:
        assert periods is not None
        chosen = parse_periods(periods, saved.store.feature_map)
        scores = predict(saved, chosen, passed, device)
    write_scores(scores, out)
    record_written(out)  # ours to replace next time, as long as nobody changes it
    console.print(f"wrote {scores.num_rows:,} scores to {out}")


@app.command("export")
def export(
    run: Annotated[Path, typer.Option(help="A trained model's directory (model.json).")],
    out: Annotated[Path, typer.Option(help="The artefact (its sidecar: OUT.json).")],
    format: Annotated[
        str,
        typer.Option(
            help="pt2 (torch.export + AOTInductor: needs a C++ compiler) | onnx | torchscript "
            "(the old format, deprecated by PyTorch)."
        ),
    ] = "pt2",
    data: Annotated[
        Path | None,
        typer.Option(help="The prepared dataset it was trained on (default: from run.json)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
) -> None:
    """A self-contained scoring artefact of a trained model (a FINED model with its KB folded
    in): encoded id/float/sequence tensors in, click probabilities out, no fined needed."""
    from fined.artifacts.export import FORMATS, OLD_FORMAT, export_model
    from fined.io import read_json
    from fined.outputs import check_output_file, record_written
    from fined.train.predict import load_saved

    if format not in FORMATS:
        raise FinedError(f"--format {format!r}: expected {', '.join(FORMATS)}")
    check_output_file(out, overwrite, "--out")
    if data is None:
        if not (run / "run.json").is_file():
            raise FinedError(f"{run}: no run.json to find its data in; give --data")
        data = Path(read_json(run / "run.json", "run description")["data"])
    saved = load_saved(run, data)
    about = {"run": str(run), "data": str(data)}
    sidecar = export_model(saved.model, saved.known_through, out, format, about)  # type: ignore[arg-type]
    record_written(out)
    names = ", ".join(spec["name"] for spec in sidecar["inputs"])
    old = (
        "; the old format, deprecated by PyTorch: pt2 is the default"
        if format == OLD_FORMAT
        else ""
    )
    console.print(f"wrote {out} ({format}{old}; inputs {names}) and {out}.json")
