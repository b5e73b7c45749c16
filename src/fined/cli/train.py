"""``fined train``, ``fined evaluate`` and ``fined predict``."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fined.cli.app import app, console, launch_workers, load_settings, record_rank
from fined.errors import FinedError

RUN_FILE = "run.json"
COMMAND = "train"  # the owner named in a training run directory's marker


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
    nproc: Annotated[
        int, typer.Option(help="Train in N processes (DDP, launched with torchrun).")
    ] = 1,
) -> None:
    """Train one model; the epoch is selected on the validation set, never on the test set.

    With ``--kb``, the model is fed instance-wise knowledge from a frozen knowledge base
    (``adaptor.*`` keys of ``--set`` tune the adaptor)."""
    from fined import distributed
    from fined.artifacts.model_store import describe_model, save_model
    from fined.config import parse_model
    from fined.data.loader import PeriodStore
    from fined.io import atomic_write_json
    from fined.outputs import owned_directory
    from fined.train.config import TrainConfig
    from fined.train.selection import make_split
    from fined.train.trainer import Trainer, seed_everything

    # The parent of torchrun's workers (or the only process) holds OUT for the whole job.
    with nullcontext() if distributed.launched() else owned_directory(out, COMMAND):
        if launch_workers(nproc, out):
            console.print(f"{nproc} workers done: {out}")
            return
        ctx = distributed.setup()
        if ctx.active and valid.startswith("tail"):
            raise FinedError("--valid tail needs every row in one process; use holdout or periods")
        model_over, train_over = load_settings(config, set_)
        adaptor_over = {
            k.removeprefix("adaptor."): model_over.pop(k)
            for k in list(model_over)
            if k.startswith("adaptor.")
        }
        if seed is not None:
            train_over["seed"] = seed
        train_cfg = parse_model(TrainConfig, train_over, "train")
        store = PeriodStore(data, shard=ctx.shard)  # with several ranks, each reads its share
        split = make_split(store, train_periods, valid, test)
        seed_everything(train_cfg.seed, train_cfg.deterministic)  # the initial weights too
        last = max(split.train_periods)
        net = _build(store, model, model_over, kb, kb_finetune, adaptor_over, last)
        run = {
            "data": str(data),
            "data_fingerprint": store.feature_map.data_fingerprint,
            "fingerprint": store.feature_map.fingerprint,
            **describe_model(net),
            "train_config": train_cfg.model_dump(),
            "train_periods": split.train_periods,
            "valid": valid,
            "test_periods": split.test_periods,
        }
        record_rank(out, ctx, store)
        if ctx.main:  # rank 0 checks and writes the run description
            _describe_run(out, run, resume)

        trainer = Trainer(net, train_cfg)
        n_train, n_valid = len(split.train), len(split.valid)
        if ctx.main:
            share = f" (rank 0 of {ctx.world}: its share)" if ctx.active else ""
            console.print(
                f"training {net.model_name} on {n_train:,} rows, validating on {n_valid:,}{share}"
            )
        fit = trainer.fit(split.train, split.valid, run_dir=out, resume=resume)
        results: dict[str, dict[str, float]] = {"valid": fit.best}
        if split.test is not None:
            results["test"] = trainer.evaluate(split.test)
        info = {
            "train_periods": split.train_periods,
            "test_periods": split.test_periods,
            "best_epoch": fit.best_epoch,
            "metrics": results,
            "train_samples_per_second": fit.train_samples_per_second,
        }
        record_rank(out, ctx, store)
        if ctx.main:
            save_model(out, net, info)
            atomic_write_json(out / "results.json", info)
            title = f"{net.model_name}: best epoch {fit.best_epoch}"
            console.print(_metrics_table(title, results))
        distributed.teardown()


def _describe_run(out: Path, run: dict, resume: bool) -> None:
    """A new run needs an empty OUT; ``--resume`` needs the same run description."""
    from fined.io import atomic_write_json, read_json

    if resume and (out / RUN_FILE).is_file():
        before = read_json(out / RUN_FILE, "run description")
        changed = [k for k in run if k != "data" and before.get(k) != run[k]]
        if changed:
            raise FinedError(f"--resume: {out} was started with different {', '.join(changed)}")
    elif (out / RUN_FILE).is_file():
        raise FinedError(
            f"{out} already holds a run (use --resume to continue it, or another --out)"
        )
    atomic_write_json(out / RUN_FILE, run)


def _build(
    store,
    model: str,
    model_over: dict,
    kb: Path | None,
    finetune: float | None,
    adaptor_over: dict,
    last_train_period: int,
):
    """The base model, or the base model fed by a knowledge base (FINED stage 2)."""
    from fined.artifacts.kb_store import load_kb
    from fined.config import parse_model
    from fined.knowledge.adaptor import AdaptorConfig
    from fined.knowledge.fined_model import FinedModel
    from fined.models.ctr_model import build_model

    if kb is None:
        if finetune is not None or adaptor_over:
            raise FinedError("--kb-finetune and adaptor.* settings need --kb")
        return build_model(model, store.feature_map, model_over)
    base_kb, meta = load_kb(kb, store.feature_map)
    if max(meta["periods"]) > last_train_period:
        raise FinedError(
            f"{kb} memorized periods up to {max(meta['periods'])}, after the training periods"
        )
    adaptor = parse_model(AdaptorConfig, {**adaptor_over, "finetune_lr": finetune}, "adaptor")
    base = build_model(model, store.feature_map, model_over, knowledge_tokens=adaptor.tokens)
    return FinedModel(base, base_kb, adaptor)


def _load_run(run_dir: Path, data: Path):
    from fined.artifacts.model_store import load_model
    from fined.data.loader import PeriodStore

    store = PeriodStore(data)
    net, meta = load_model(run_dir, store.feature_map)
    return store, net, meta


@app.command("evaluate")
def evaluate(
    run: Annotated[Path, typer.Option(help="A run directory written by `fined train`.")],
    data: Annotated[Path, typer.Option(help="The prepared dataset it was trained on.")],
    periods: Annotated[str, typer.Option(help="Periods to evaluate, e.g. 6:7.")],
    part: Annotated[str, typer.Option(help="all | train | holdout rows of each period.")] = "all",
) -> None:
    """AUC, gAUC and LogLoss of a trained model on some periods."""
    from fined.train.selection import parse_periods
    from fined.train.trainer import Trainer

    if part not in ("all", "train", "holdout"):
        raise FinedError(f"--part {part!r}: expected all, train or holdout")
    store, net, meta = _load_run(run, data)
    chosen = parse_periods(periods, store.feature_map)
    known = max(meta.get("train_periods") or [len(store.feature_map.periods) - 1])
    metrics = Trainer(net).evaluate(store.load(chosen, part, known_through=known))
    console.print(_metrics_table(f"{meta['model']} on periods {periods}", {part: metrics}))
    console.print(json.dumps({k: v for k, v in metrics.items()}))


@app.command("predict")
def predict(
    run: Annotated[Path, typer.Option(help="A run directory written by `fined train`.")],
    data: Annotated[Path, typer.Option(help="The prepared dataset it was trained on.")],
    periods: Annotated[str, typer.Option(help="Periods to score.")],
    out: Annotated[Path, typer.Option(help="Scores file: .csv or .parquet.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
) -> None:
    """Click probabilities for every row of some periods, to CSV or Parquet."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from fined.io import atomic_write_bytes
    from fined.outputs import check_output_file
    from fined.train.selection import parse_periods
    from fined.train.trainer import Trainer

    if out.suffix not in (".csv", ".parquet"):
        raise FinedError(f"--out {out}: use a .csv or .parquet file name")
    check_output_file(out, overwrite, "--out")
    store, net, meta = _load_run(run, data)
    fmap = store.feature_map
    chosen = parse_periods(periods, fmap)
    known = max(meta.get("train_periods") or [len(fmap.periods) - 1])
    trainer = Trainer(net)
    parts = []
    for p in chosen:
        rows = store.load([p], known_through=known)
        parts.append(
            pa.table(
                {
                    "period": pa.array([fmap.periods[p].name] * len(rows)),
                    "time": rows.time.numpy(),
                    "label": rows.label.numpy().astype("int8"),
                    "score": trainer.predict(rows),
                }
            )
        )
    table = pa.concat_tables(parts)
    sink = pa.BufferOutputStream()
    if out.suffix == ".csv":
        pacsv.write_csv(table, sink)
    else:
        pq.write_table(table, sink)
    atomic_write_bytes(out, sink.getvalue().to_pybytes())
    console.print(f"wrote {table.num_rows:,} scores to {out}")
