"""The run's report: ``results.csv``, ``forgetting.csv``, ``summary.csv``, ``report.md`` and
``figures/`` (test AUC per period, forgetting heatmaps, the KB's patterns). All written
atomically, all recomputed from the cell records (so a resumed run writes the same files)."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from fined.io import atomic_write_text
from fined.protocol.config import RunConfig
from fined.protocol.opened_run import OpenedRun
from fined.report.markdown import RunFacts, markdown
from fined.report.records import RunResult
from fined.report.tables import (
    bwt_table,
    forgetting_table,
    frontier_table,
    results_table,
    summary_table,
)


def _csv(frame: pl.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.write_csv(float_precision=6))


def write_report(run: OpenedRun, result: RunResult) -> pl.DataFrame:
    """Every file of the report, from the run's records; returns the summary table."""
    root, config, periods, s = run.root, run.config, run.periods, run.s
    # Periods where the data says part of the past is switched off (shaded in the figures).
    off = run.truth.switched_off(periods) if run.truth is not None else set()
    order = [spec.label for spec in config.strategies]
    results = results_table(result.records, order)
    forgetting = forgetting_table(result.records, result.warmups)
    summary = summary_table(results, bwt_table(forgetting, s), config.baseline, order)
    _csv(results, root / "results.csv")
    _csv(forgetting, root / "forgetting.csv")
    _csv(summary, root / "summary.csv")
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    _figures(results, forgetting, config, periods, figures, off)
    frontier = frontier_table(summary, {spec.label: spec.family for spec in config.strategies})
    swept = frontier.group_by("model", "family").agg(pl.col("bytes_kept").n_unique().alias("n"))
    if (swept["n"] > 1).any():  # a storage budget swept: AUC and BWT against the bytes kept
        from fined.report.plots import auc_against_bytes

        _csv(frontier, root / "frontier.csv")
        auc_against_bytes(frontier, figures / "auc_vs_bytes.png")
    facts = RunFacts(
        config.name,
        config.models,
        config.seeds,
        config.baseline,
        [spec.label for spec in config.strategies if spec.uses_kb],
    )
    atomic_write_text(root / "report.md", markdown(facts, results, summary, periods, s))
    kb_figure(run, figures / "kb_patterns.png")
    return summary


def kb_figure(run: OpenedRun, path: Path) -> None:
    """The gate heatmap of the first KB variant (first seed) on the KB periods' held-out
    rows (none when no strategy uses a KB)."""
    from fined.knowledge.inspection import inspect_kb
    from fined.report.plots import gate_heatmap

    config, s = run.config, run.s
    spec = next((x for x in config.strategies if x.uses_kb), None)
    if spec is None:
        return
    seed = config.seeds[0]
    kb = run.kbs.get(config.kb_config(spec), seed, label=spec.label)
    names = run.periods
    title = f"KB of {spec.label}, seed {seed}: periods {names[0]}..{names[s - 1]}"
    planted = run.truth.patterns if run.truth is not None else None
    ins = inspect_kb(kb, run.data.holdout(list(range(s)), s - 1))
    gate_heatmap(ins, path, title, planted)


def _figures(
    results, forgetting, config: RunConfig, periods: list[str], figures: Path, off: set[str]
) -> None:
    from fined.report.plots import forgetting_heatmaps, test_auc_lines

    order = [spec.label for spec in config.strategies]
    knowledge = {spec.label for spec in config.strategies if spec.uses_kb}
    rank = {name: i for i, name in enumerate(order)}
    per_period = (
        results.group_by("strategy", "model", "t", "test_period")
        .agg(pl.col("auc").mean())
        .with_columns(pl.col("strategy").replace_strict(rank).alias("_o"))
        .sort("model", "_o", "t")
    )
    test_auc_lines(per_period, figures / "test_auc.png", knowledge, off)
    mean = forgetting.group_by("strategy", "model", "after", "period").agg(pl.col("auc").mean())
    last = int(mean["period"].max())
    for model in mean["model"].unique(maintain_order=True).sort().to_list():
        matrices = {}
        for strategy in order:
            part = mean.filter((pl.col("model") == model) & (pl.col("strategy") == strategy))
            if part.height == 0:
                continue
            cells = {(a, i): v for a, i, v in part.select("after", "period", "auc").iter_rows()}
            after = sorted({a for a, _ in cells})
            matrices[strategy] = [
                [cells.get((a, i), math.nan) for i in range(last + 1)] for a in after
            ]
        labels = periods[: last + 1]
        forgetting_heatmaps(matrices, labels, figures / f"forgetting_{model}.png")
        base = matrices.get(config.baseline)
        if base is not None and len(matrices) > 1:  # each strategy's gain over the baseline
            gains = {
                f"{name} − {config.baseline}": [
                    [v - b for v, b in zip(row, brow, strict=True)]
                    for row, brow in zip(grid, base, strict=True)
                ]
                for name, grid in matrices.items()
                if name != config.baseline
            }
            path = figures / f"forgetting_{model}_vs_{config.baseline}.png"
            forgetting_heatmaps(gains, labels, path, "AUC difference", centered=True)
