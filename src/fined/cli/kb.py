"""``fined kb``: build a knowledge base from past periods, and inspect what it learned."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fined.cli.app import DEVICE_HELP, app, console, launch_workers, load_settings
from fined.errors import FinedError

COMMAND = "kb build"  # the owner named in a knowledge-base directory's marker

kb_app = typer.Typer(no_args_is_help=True, help="Build and inspect knowledge bases.")
app.add_typer(kb_app, name="kb")


@kb_app.command("build")
def build(
    data: Annotated[Path, typer.Option(help="A prepared dataset directory.")],
    periods: Annotated[str, typer.Option(help="The past periods to memorize, e.g. 0:2.")],
    out: Annotated[Path, typer.Option(help="Knowledge-base directory (kb.safetensors, kb.json).")],
    config: Annotated[
        Path | None, typer.Option(help="KB YAML (trainer keys under train:).")
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override KEY=VALUE (train.KEY).")] = [],  # noqa: B006
    no_essential: Annotated[
        bool, typer.Option("--no-essential", help="Ablation: no information bottleneck.")
    ] = False,
    no_disentangled: Annotated[
        bool, typer.Option("--no-disentangled", help="Ablation: no MI penalty.")
    ] = False,
    no_l0: Annotated[
        bool, typer.Option("--no-l0", help="Ablation: no L0 penalty on the gates.")
    ] = False,
    dense_gates: Annotated[
        bool, typer.Option("--dense-gates", help="Ablation: every field in every pattern.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Train in N processes (DDP, launched with torchrun).")
    ] = 1,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Stage 1: memorize past periods into a frozen parametric knowledge base."""
    from fined import distributed
    from fined.outputs import owned_directory

    if nproc < 1:
        raise FinedError(f"--nproc {nproc}: expected at least 1")
    # The parent of torchrun's workers (or the only process) holds OUT for the whole build.
    with nullcontext() if distributed.launched() else owned_directory(out, COMMAND):
        if (out / "kb.json").exists():
            raise FinedError(f"{out}: already holds a knowledge base; choose another --out")
        if nproc > 1 and not distributed.launched():
            launch_workers(nproc, out)
            console.print(f"{nproc} workers done: {out}")
            return
        _build(data, periods, out, config, set_, no_essential, no_disentangled, no_l0, dense_gates,
               device)  # fmt: skip


def _build(
    data: Path,
    periods: str,
    out: Path,
    config: Path | None,
    sets: list[str],
    no_essential: bool,
    no_disentangled: bool,
    no_l0: bool,
    dense_gates: bool,
    device: str,
) -> None:
    from fined import distributed
    from fined.artifacts.kb_store import kb_info
    from fined.config import resolve
    from fined.data.loader import PeriodStore
    from fined.devices import resolve_device
    from fined.knowledge.knowledge_base import KBConfig
    from fined.train.config import KBTrainConfig
    from fined.train.kb_builder import build_knowledge_base
    from fined.train.selection import parse_periods

    target = resolve_device(device)
    ctx = distributed.setup(target)
    kb_over, train_over = load_settings(config, sets)
    for flag, key, value in (
        (no_essential, "essential", False),
        (no_disentangled, "disentangled", False),
        (no_l0, "sparse", False),
        (dense_gates, "dense_gates", True),
    ):
        if flag:
            kb_over[key] = value
    kb_cfg = resolve(KBConfig, kb_over, where="kb")
    train_cfg = resolve(KBTrainConfig, train_over, where="train")
    store = PeriodStore(data, shard=ctx.shard)  # with several ranks, each reads its share
    chosen = parse_periods(periods, store.feature_map)
    built = build_knowledge_base(store, chosen, kb_cfg, train_cfg, out, device=target)
    distributed.record_rank(out, store.reads)
    distributed.teardown()
    if not ctx.main:
        return
    meta = kb_info(out)
    console.print(
        f"knowledge base of {kb_cfg.slots} slots x {kb_cfg.dim} built from periods "
        f"{', '.join(meta['period_names'])}: valid AUC {built.fit.best.get('auc', math.nan):.4f} "
        f"(epoch {built.fit.best_epoch}), {meta['bytes']:,} bytes -> {out}"
    )


@kb_app.command("inspect")
def inspect(
    kb_dir: Annotated[Path, typer.Argument(help="A knowledge-base directory.")],
    data: Annotated[Path, typer.Option(help="The prepared dataset it was built on.")],
    periods: Annotated[
        str | None, typer.Option(help="Rows to inspect (default: its periods' held-out rows).")
    ] = None,
    rows: Annotated[int, typer.Option(help="At most this many rows.")] = 20_000,
    plot: Annotated[Path | None, typer.Option(help="Write a slots x fields heatmap (PNG).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the --plot file if it exists.")
    ] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """The field patterns each slot picks, their order, the L0, the MI between slots."""
    from fined.data.loader import PeriodStore
    from fined.outputs import check_output_file, record_written

    if plot is not None:
        check_output_file(plot, overwrite, "--plot")
    from fined.artifacts.kb_store import load_kb
    from fined.data.datasets.synthetic import read_ground_truth
    from fined.devices import resolve_device
    from fined.knowledge.inspection import inspect_kb, recovery
    from fined.train.selection import parse_periods

    store = PeriodStore(data)
    kb, meta = load_kb(kb_dir, store.feature_map)
    if periods is None:
        sample = store.load(meta["periods"], "holdout", known_through=kb.known_through)
    else:
        sample = store.load(
            parse_periods(periods, store.feature_map), known_through=kb.known_through
        )
    sample = sample.slice(0, min(rows, len(sample)))
    target = resolve_device(device)
    ins = inspect_kb(kb.to(target), sample.to(target))

    table = Table(title=f"knowledge base {kb_dir} ({len(sample):,} rows)")
    for col in ("slot", "mean order", "top field combinations (share of instances)", "max MI"):
        table.add_column(col, justify="left" if col.startswith("top") else "right")
    for s in ins.slots:
        combos = "; ".join(f"{'+'.join(c) or '(none)'} {share:.0%}" for c, share in s.top[:3])
        mi = max((v for v in ins.mi[s.slot] if not math.isnan(v)), default=math.nan)
        table.add_row(str(s.slot), f"{s.mean_order:.2f}", combos, f"{mi:.3f}")
    table.caption = (
        f"expected L0 {ins.expected_l0:.3f}; {ins.binary_share:.1%} of gates exactly 0 or 1; "
        "MI: Gaussian estimate between slot vectors, in nats"
    )
    console.print(table)

    truth = read_ground_truth(data)
    planted = truth.patterns if truth is not None else None
    if planted is not None:
        rec = Table(title="planted patterns (synthetic ground truth)")
        for col in ("planted fields", "best slot", "Jaccard"):
            rec.add_column(col)
        found = recovery(ins, planted)
        for fields, slot, jac in found:
            rec.add_row("+".join(fields), str(slot), f"{jac:.2f}")
        hits = sum(j >= 0.5 for _, _, j in found)
        rec.caption = f"{hits} of {len(found)} planted sets matched with Jaccard >= 0.5"
        console.print(rec)
    if plot is not None:
        from fined.report.plots import gate_heatmap

        names = ", ".join(meta["period_names"])
        seed = meta.get("metrics", {}).get("seed")
        title = f"KB {kb_dir.name}: periods {names}" + (
            f", seed {seed}" if seed is not None else ""
        )
        gate_heatmap(ins, plot, title, planted)
        record_written(plot)
        console.print(f"wrote {plot}")
