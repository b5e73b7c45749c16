"""From cell records to tables: results, the forgetting matrix, the summary over seeds.

- ``results``: a row per strategy x model x seed x period (test on the next period).
- ``forgetting``: R[t][i], the AUC after period t on P_i's held-out slice, i <= t; the row
  t = s-1 is the shared warm-up model (every strategy starts from it).
- ``summary``: per strategy and model, mean and standard deviation over seeds of the mean
  test metrics over periods, RelaImpr against the baseline strategy (from the mean AUCs),
  BWT and the bytes kept from the past (the most any period kept).

BWT = mean over i < T of (R[T][i] - R[d(i)][i]), T the last period trained, and d(i) the first
model that had learned P_i: itself for i >= s, the warm-up model (row s-1) for i < s.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from fined.report.records import CellRecord, WarmupRecord
from fined.train.metrics import rela_impr

RESULT_COLUMNS = [
    "strategy", "kind", "model", "seed", "t", "period", "test_period", "auc", "logloss",
    "gauc", "valid_auc", "best_epoch", "epochs", "train_rows", "train_seconds", "kb_seconds",
    "bytes_kept", "deployed", "candidate_auc",
]  # fmt: skip


def _row(r: CellRecord) -> dict[str, Any]:
    """A record as a results row; a chain without a fallback deploys its own model."""
    row = r.model_dump(exclude={"forgetting", "weights_sha256"})
    alone = {"deployed": r.strategy, "candidate_auc": r.auc}
    return {k: row[k] if k in row else alone[k] for k in RESULT_COLUMNS}


def results_table(records: list[CellRecord], order: list[str]) -> pl.DataFrame:
    rows = [_row(r) for r in records]
    frame = pl.DataFrame(rows, schema_overrides={"valid_auc": pl.Float64, "gauc": pl.Float64,
                                                 "candidate_auc": pl.Float64})  # fmt: skip
    rank = {name: i for i, name in enumerate(order)}
    return (
        frame.with_columns(pl.col("strategy").replace_strict(rank).alias("_o"))
        .sort("_o", "model", "seed", "t")
        .drop("_o")
    )


def forgetting_table(records: list[CellRecord], warmups: list[WarmupRecord]) -> pl.DataFrame:
    rows = []
    labels = sorted({(r.strategy, r.model, r.seed) for r in records})
    warmup = {(w.model, w.seed): w for w in warmups}
    for strategy, model, seed in labels:
        w = warmup[(model, seed)]
        for i, auc in w.forgetting.items():
            rows.append((strategy, model, seed, w.t, int(i), auc))
    for r in records:
        for i, auc in r.forgetting.items():
            rows.append((r.strategy, r.model, r.seed, r.t, int(i), auc))
    return pl.DataFrame(
        rows, schema=["strategy", "model", "seed", "after", "period", "auc"], orient="row"
    ).sort("strategy", "model", "seed", "after", "period")


def backward_transfer(matrix: dict[tuple[int, int], float], s: int) -> float:
    """BWT of one (strategy, model, seed) from its R[t][i] entries."""
    last = max(t for t, _ in matrix)
    gaps = [matrix[(last, i)] - matrix[(max(i, s - 1), i)] for i in range(last)]
    return sum(gaps) / len(gaps) if gaps else math.nan


def held_out_auc(matrix: dict[tuple[int, int], float], s: int) -> float:
    """The validation figure of a chain: after each period t >= s it trained on, the mean AUC
    over the held-out slices of P_0..P_t (all periods trained on so far), averaged over t.
    Only held-out slices of training periods: the test periods play no part."""
    rows = sorted({t for t, _ in matrix if t >= s})
    means = [sum(matrix[(t, i)] for i in range(t + 1)) / (t + 1) for t in rows]
    return sum(means) / len(means) if means else math.nan


def bwt_table(forgetting: pl.DataFrame, s: int) -> pl.DataFrame:
    """Per (strategy, model, seed): BWT and the held-out AUC over every period seen."""
    out = []
    for (strategy, model, seed), part in forgetting.group_by(
        ["strategy", "model", "seed"], maintain_order=True
    ):
        matrix = {(a, i): v for a, i, v in part.select("after", "period", "auc").iter_rows()}
        out.append((strategy, model, seed, backward_transfer(matrix, s), held_out_auc(matrix, s)))
    return pl.DataFrame(
        out, schema=["strategy", "model", "seed", "bwt", "held_out_auc"], orient="row"
    )


def summary_table(
    results: pl.DataFrame, bwt: pl.DataFrame, baseline: str, order: list[str]
) -> pl.DataFrame:
    """``forward_auc``: the validation figure that asks the test's question without a test
    period of its own (``fined.protocol.forward``): the mean AUC of each model of t-1 on
    P_t, t after the first step; that is, every test but the last (NaN with one step)."""
    last = pl.col("t") == pl.col("t").max().over("strategy", "model", "seed")
    per_seed = (
        results.group_by("strategy", "model", "seed")
        .agg(
            pl.col("auc").mean(),
            pl.col("logloss").mean(),
            pl.col("gauc").mean(),
            pl.col("bytes_kept").max(),
            pl.col("train_seconds").sum(),
            pl.col("kb_seconds").sum(),
        )
        .join(bwt, on=["strategy", "model", "seed"])
        .join(
            results.filter(~last)
            .group_by("strategy", "model", "seed")
            .agg(pl.col("auc").mean().alias("forward_auc")),
            on=["strategy", "model", "seed"],
            how="left",
        )
        .with_columns(pl.col("forward_auc").fill_null(math.nan))
    )
    measures = ("auc", "logloss", "gauc", "bwt", "held_out_auc", "forward_auc")
    std = [pl.col(m).std(ddof=1).fill_null(0.0).alias(f"{m}_std") for m in measures]
    mean = [pl.col(m).mean().alias(f"{m}_mean") for m in measures]
    summary = per_seed.group_by("strategy", "model").agg(
        pl.len().alias("seeds"),
        *mean,
        *std,
        pl.col("bytes_kept").mean(),
        pl.col("train_seconds").mean(),
        pl.col("kb_seconds").mean(),
    )
    base = dict(
        summary.filter(pl.col("strategy") == baseline).select("model", "auc_mean").iter_rows()
    )
    relaimpr = [
        rela_impr(a, base.get(m, math.nan))
        for m, a in summary.select("model", "auc_mean").iter_rows()
    ]
    rank = {name: i for i, name in enumerate(order)}
    columns = [
        "strategy", "model", "seeds", "auc_mean", "auc_std", "relaimpr", "logloss_mean",
        "logloss_std", "gauc_mean", "gauc_std", "bwt_mean", "bwt_std", "held_out_auc_mean",
        "held_out_auc_std", "forward_auc_mean", "forward_auc_std", "bytes_kept",
        "train_seconds", "kb_seconds",
    ]  # fmt: skip
    return (
        summary.with_columns(
            pl.Series("relaimpr", relaimpr, dtype=pl.Float64),
            pl.col("strategy").replace_strict(rank).alias("_o"),
        )
        .sort("model", "_o")
        .select(columns)
    )


def frontier_table(summary: pl.DataFrame, families: dict[str, str]) -> pl.DataFrame:
    """Test AUC and BWT against the bytes kept: a row per (model, strategy) with its
    ``family`` (the line it belongs to in the AUC-vs-bytes figure), by bytes."""
    return (
        summary.with_columns(
            pl.col("strategy").replace_strict(families, return_dtype=pl.String).alias("family")
        )
        .select(
            "model",
            "family",
            "strategy",
            "bytes_kept",
            "auc_mean",
            "auc_std",
            "bwt_mean",
            "bwt_std",
            "held_out_auc_mean",
        )  # fmt: skip
        .sort("model", "family", "bytes_kept")
    )


def validation_winners(summary: pl.DataFrame) -> list[dict[str, Any]]:
    """Per model: the strategy with the best forward AUC (its models of t-1 on P_t: the
    test's question, asked of the periods before the last; with one step, where there is no
    such figure, the held-out AUC over the periods seen), its margin over the runner-up, and
    the test AUC of both."""
    out = []
    forward = not summary["forward_auc_mean"].is_nan().all()
    figure = "forward_auc_mean" if forward else "held_out_auc_mean"
    for model in summary["model"].unique(maintain_order=True).to_list():
        rows = summary.filter(pl.col("model") == model).sort(figure, descending=True,
                                                             nulls_last=True)  # fmt: skip
        best = rows.row(0, named=True)
        second = rows.row(1, named=True) if rows.height > 1 else best
        out.append(
            {
                "model": model,
                "figure": "forward" if forward else "held-out",
                "best": best["strategy"],
                "margin": best[figure] - second[figure],
                "second": second["strategy"],
                "best_test": best["auc_mean"],
                "second_test": second["auc_mean"],
                "test_best": summary.filter(pl.col("model") == model)
                .sort("auc_mean", descending=True)
                .row(0, named=True)["strategy"],
            }
        )
    return out
