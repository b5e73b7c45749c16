"""``report.md``: the run's tables and a plain verdict per model, as Markdown."""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from fined.report.tables import validation_winners


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


@dataclass
class RunFacts:
    """What the report says of the run itself."""

    name: str
    models: list[str]
    seeds: list[int]
    baseline: str  # the strategy RelaImpr is measured against
    knowledge: list[str]  # the strategies that use a knowledge base


def markdown(
    run: RunFacts, results: pl.DataFrame, summary: pl.DataFrame, periods: list[str], s: int
) -> str:
    steps = sorted(results["t"].unique().to_list())
    lines = [
        f"# {run.name}: continual CTR prediction, strategy by strategy",
        "",
        f"- Knowledge base and warm-up models: periods {periods[0]}..{periods[s - 1]}.",
        f"- Then each period from {periods[steps[0]]} to {periods[steps[-1]]}: train on it "
        "(epoch selected on its held-out slice), test on the next period.",
        f"- Models: {', '.join(run.models)}; seeds: {', '.join(map(str, run.seeds))}; "
        f"RelaImpr against `{run.baseline}`.",
        "- AUC, LogLoss, gAUC: mean over test periods, then mean ± std over seeds. BWT: mean "
        "change of the held-out AUC of earlier periods between when they were learned and the "
        "end (negative = forgetting). Held-out AUC: the validation figure, the mean AUC on the "
        "held-out slices of every period trained on so far, after each period (no test period "
        "in it). Bytes kept: past data (or knowledge) the strategy stores. Cost: seconds of "
        "training and of the KB builds the strategy waited for (one seed).",
        "",
        "## Summary",
        "",
        "| model | strategy | test AUC | RelaImpr | LogLoss | gAUC | BWT | held-out AUC | "
        "forward AUC | bytes kept | cost s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.iter_rows(named=True):
        lines.append(
            f"| {r['model']} | {r['strategy']} | {_pm(r['auc_mean'], r['auc_std'])} | "
            f"{r['relaimpr']:+.2f} % | {_pm(r['logloss_mean'], r['logloss_std'])} | "
            f"{_pm(r['gauc_mean'], r['gauc_std'])} | {_pm(r['bwt_mean'], r['bwt_std'])} | "
            f"{_pm(r['held_out_auc_mean'], r['held_out_auc_std'])} | "
            f"{_pm(r['forward_auc_mean'], r['forward_auc_std'])} | "
            f"{_bytes(r['bytes_kept'])} | {r['train_seconds'] + r['kb_seconds']:.0f} |"
        )
    lines += ["", "## Where FINED stands", ""] + _verdicts(summary, run.baseline, run.knowledge)
    lines += ["", "## Chosen on validation", ""] + [
        f"- {w['model']}: **{w['best']}** has the best {w['figure']} AUC (+{w['margin']:.4f} over "
        f"{w['second']}); on the test periods {w['best']} {w['best_test']:.4f}, {w['second']} "
        f"{w['second_test']:.4f} (best on test: {w['test_best']})."
        for w in validation_winners(summary)
    ]
    lines += [
        "",
        "Forward AUC: each model of t-1 on the period t it had not yet trained on, for every "
        "step but the first (every test but the last): the test's question, asked of periods "
        "before the last. Held-out AUC (the slices of every period trained on) rewards "
        "remembering, and points the wrong way on logs where the past does not pay.",
    ]
    deployed = _deployed(results)
    if deployed:
        lines += ["", "## Deployed each period", ""] + deployed
    lines += ["", "## Test AUC per period (mean over seeds)", ""]
    per = results.group_by("strategy", "model", "test_period").agg(pl.col("auc").mean())
    tests = [periods[t + 1] for t in steps]
    lines += ["| model | strategy | " + " | ".join(tests) + " |", "|---|---|" + "---|" * len(tests)]
    for model, strategy in summary.select("model", "strategy").iter_rows():
        part = per.filter((pl.col("model") == model) & (pl.col("strategy") == strategy))
        auc = dict(part.select("test_period", "auc").iter_rows())
        cells = " | ".join(f"{auc[p]:.4f}" for p in tests)
        lines.append(f"| {model} | {strategy} | {cells} |")
    lines += [
        "",
        "## Figures",
        "",
        "![test AUC per period](figures/test_auc.png)",
        "",
    ]
    lines += [f"![forgetting, {m}](figures/forgetting_{m}.png)" for m in run.models]
    if run.knowledge:
        lines += ["", "![the knowledge base's patterns](figures/kb_patterns.png)"]
    return "\n".join(lines) + "\n"


def _deployed(results: pl.DataFrame) -> list[str]:
    """For strategies with a fallback: which model each period deployed, and what the
    strategy's own model alone scored on the test."""
    lines = []
    backed = results.filter(pl.col("deployed") != pl.col("strategy"))
    labels = backed["strategy"].unique().to_list()
    pairs = results.filter(pl.col("strategy").is_in(labels)).select("model", "strategy")
    for model, strategy in pairs.unique(maintain_order=True).iter_rows():
        part = results.filter((pl.col("model") == model) & (pl.col("strategy") == strategy))
        own = int((part["deployed"] == strategy).sum())
        deployed, alone = float(part["auc"].mean()), float(part["candidate_auc"].mean())  # type: ignore[arg-type]
        lines.append(
            f"- {model} {strategy}: its own model in {own} of {part.height} (seed, period) "
            f"cells, its fallback in the rest; test AUC as deployed {deployed:.4f}, its own "
            f"model alone {alone:.4f}."
        )
    return lines


def _verdicts(summary: pl.DataFrame, baseline: str, knowledge: list[str]) -> list[str]:
    """Per model and FINED variant: its test AUC minus each other strategy's."""
    out = []
    for model in summary["model"].unique(maintain_order=True).to_list():
        rows = {
            r["strategy"]: r for r in summary.filter(pl.col("model") == model).iter_rows(named=True)
        }
        others = [k for k in rows if k not in knowledge]
        for name in (k for k in rows if k in knowledge):
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
