"""The run's outputs: ``results.csv``, ``forgetting.csv``, ``summary.csv``, ``report.md`` and
``figures/`` (test AUC per period, forgetting heatmaps, the KB's patterns). All written
atomically, all recomputed from the cell records (so a resumed run writes the same files)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from fined.io import atomic_write_text
from fined.protocol.config import RunConfig
from fined.protocol.results import bwt_table, forgetting_table, results_table, summary_table


def _csv(frame: pl.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.write_csv(float_precision=6))


def write_outputs(
    root: Path, config: RunConfig, run: dict[str, Any], periods: list[str], s: int
) -> pl.DataFrame:
    order = [spec.label for spec in config.strategies]
    results = results_table(run["records"], order)
    forgetting = forgetting_table(run["records"], run["warmups"])
    summary = summary_table(results, bwt_table(forgetting, s), config.baseline, order)
    _csv(results, root / "results.csv")
    _csv(forgetting, root / "forgetting.csv")
    _csv(summary, root / "summary.csv")
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    _figures(results, forgetting, order, periods, figures)
    atomic_write_text(root / "report.md", markdown(config, results, summary, periods, s))
    return summary


def _figures(results, forgetting, order, periods, figures: Path) -> None:
    from fined.report.plots import forgetting_heatmaps, test_auc_lines

    rank = {name: i for i, name in enumerate(order)}
    per_period = (
        results.group_by("strategy", "model", "t", "test_period")
        .agg(pl.col("auc").mean())
        .with_columns(pl.col("strategy").replace_strict(rank).alias("_o"))
        .sort("model", "_o", "t")
    )
    test_auc_lines(per_period, figures / "test_auc.png")
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
        forgetting_heatmaps(matrices, periods[: last + 1], figures / f"forgetting_{model}.png")


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n}"


def markdown(
    config: RunConfig, results: pl.DataFrame, summary: pl.DataFrame, periods: list[str], s: int
) -> str:
    steps = sorted(results["t"].unique().to_list())
    lines = [
        f"# {config.name}: continual CTR prediction, strategy by strategy",
        "",
        f"- Knowledge base and warm-up models: periods {periods[0]}..{periods[s - 1]}.",
        f"- Then each period from {periods[steps[0]]} to {periods[steps[-1]]}: train on it "
        "(epoch selected on its held-out slice), test on the next period.",
        f"- Models: {', '.join(config.models)}; seeds: {', '.join(map(str, config.seeds))}; "
        f"RelaImpr against `{config.baseline}`.",
        "- AUC, LogLoss, gAUC: mean over test periods, then mean ± std over seeds. BWT: mean "
        "change of the held-out AUC of earlier periods between when they were learned and the "
        "end (negative = forgetting). Bytes kept: past data (or knowledge) the strategy stores.",
        "",
        "## Summary",
        "",
        "| model | strategy | test AUC | RelaImpr | LogLoss | gAUC | BWT | bytes kept | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.iter_rows(named=True):
        lines.append(
            f"| {r['model']} | {r['strategy']} | {_pm(r['auc_mean'], r['auc_std'])} | "
            f"{r['relaimpr']:+.2f} % | {_pm(r['logloss_mean'], r['logloss_std'])} | "
            f"{_pm(r['gauc_mean'], r['gauc_std'])} | {_pm(r['bwt_mean'], r['bwt_std'])} | "
            f"{_bytes(r['bytes_kept'])} | {r['train_seconds']:.0f} |"
        )
    lines += ["", "## Where FINED stands", ""] + _verdicts(summary, config.baseline)
    lines += ["", "## Test AUC per period (mean over seeds)", ""]
    per = results.group_by("strategy", "model", "test_period").agg(pl.col("auc").mean())
    tests = [periods[t + 1] for t in steps]
    lines += ["| model | strategy | " + " | ".join(tests) + " |", "|---|---|" + "---|" * len(tests)]
    for r in summary.select("model", "strategy").iter_rows():
        part = per.filter((pl.col("model") == r[0]) & (pl.col("strategy") == r[1]))
        values = dict(part.select("test_period", "auc").iter_rows())
        lines.append(f"| {r[0]} | {r[1]} | " + " | ".join(f"{values[p]:.4f}" for p in tests) + " |")
    lines += [
        "",
        "## Figures",
        "",
        "![test AUC per period](figures/test_auc.png)",
        "",
    ]
    lines += [f"![forgetting, {m}](figures/forgetting_{m}.png)" for m in config.models]
    if any(spec.uses_kb for spec in config.strategies):
        lines += ["", "![the knowledge base's patterns](figures/kb_patterns.png)"]
    return "\n".join(lines) + "\n"


def _verdicts(summary: pl.DataFrame, baseline: str) -> list[str]:
    """Per model and FINED variant: its test AUC minus each other strategy's."""
    out = []
    for model in summary["model"].unique(maintain_order=True).to_list():
        rows = {
            r["strategy"]: r for r in summary.filter(pl.col("model") == model).iter_rows(named=True)
        }
        others = [k for k in rows if not k.startswith("fined")]
        for name in (k for k in rows if k.startswith("fined")):
            r = rows[name]
            diffs = {o: round(r["auc_mean"] - rows[o]["auc_mean"], 4) + 0.0 for o in others}
            wins = sum(d > 0 for d in diffs.values())
            listed = ", ".join(f"{o} {d:+.4f}" for o, d in diffs.items())
            out.append(
                f"- **{model} / {name}** (test AUC {r['auc_mean']:.4f}, keeps "
                f"{_bytes(r['bytes_kept'])}): above {wins} of {len(diffs)} other strategies "
                f"({listed})."
            )
    return out or [f"(no FINED strategy in this run; RelaImpr is against `{baseline}`)"]
