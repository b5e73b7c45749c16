"""CTR metrics: exact AUC, LogLoss, gAUC (per-user AUC weighted by impressions), RelaImpr."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch
from sklearn.metrics import log_loss, roc_auc_score

_EPS = 1e-7


def one_class(label: torch.Tensor) -> str | None:
    """What makes the AUC of these labels undefined ("all 0", "all 1", "no rows"), or None."""
    classes = label.unique()
    if len(classes) == 0:
        return "no rows"
    return f"all {classes[0].item():g}" if len(classes) == 1 else None


# A test AUC is refused (``fined run``) on fewer rows of either class than this: with 10
# clicks and 10 non-clicks it ranks 100 pairs, its standard error still ~0.06.
MIN_CLASS_ROWS = 10


def too_few_to_rank(clicks: int, others: int) -> str | None:
    """Why rows with this many clicks and non-clicks cannot rank a model (one class, or fewer
    than ``MIN_CLASS_ROWS`` of a class), or None."""
    if clicks + others == 0:
        return "no rows"
    if min(clicks, others) < MIN_CLASS_ROWS:
        return (f"{clicks + others} rows, {clicks} of them clicks: fewer than {MIN_CLASS_ROWS} "
                "of each class, too few to rank")  # fmt: skip
    return None


def test_period_refused(name: str, why: str) -> str:
    """The message that refuses a test period."""
    return (
        f"period {name}: its rows are {why}: its test AUC would be noise averaged into the "
        "run's figures; end the run before it (last_period, periods.end) or merge it with "
        "its neighbour"
    )


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """Exact ROC AUC over the whole set (scikit-learn); NaN when only one class is present."""
    if len(np.unique(label)) < 2:
        return float("nan")
    return float(roc_auc_score(label, score))


def logloss(label: np.ndarray, prob: np.ndarray) -> float:
    return float(log_loss(label, np.clip(prob, _EPS, 1 - _EPS), labels=[0, 1]))


def gauc(label: np.ndarray, score: np.ndarray, group: np.ndarray) -> float:
    """Per-group AUC averaged with weights = the group's impressions.

    Groups with a single class have no AUC and are left out (weights renormalized). Computed
    from average ranks within each group (Mann-Whitney), vectorized with polars.
    """
    frame = pl.DataFrame({"g": group, "y": label.astype(np.int8), "s": score})
    per_group = (
        frame.with_columns(pl.col("s").rank("average").over("g").alias("r"))
        .group_by("g")
        .agg(
            pl.len().alias("n"),
            pl.col("y").sum().cast(pl.Float64).alias("pos"),
            (pl.col("r") * pl.col("y")).sum().alias("rank_pos"),
        )
        .with_columns((pl.col("n") - pl.col("pos")).alias("neg"))
        .filter((pl.col("pos") > 0) & (pl.col("neg") > 0))
        .sort("g")  # a fixed summation order: identical results run after run
        .with_columns(
            (
                (pl.col("rank_pos") - pl.col("pos") * (pl.col("pos") + 1) / 2)
                / (pl.col("pos") * pl.col("neg"))
            ).alias("auc")
        )
    )
    if per_group.height == 0:
        return float("nan")
    w = per_group["n"].to_numpy().astype(np.float64)
    return float(np.sum(per_group["auc"].to_numpy() * w) / w.sum())


def rela_impr(auc_model: float, auc_base: float) -> float:
    """Relative AUC improvement in percent: ``((AUC_m - 0.5) / (AUC_base - 0.5) - 1) * 100``."""
    if math.isnan(auc_model) or math.isnan(auc_base) or auc_base == 0.5:
        return float("nan")
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def score_metrics(
    label: np.ndarray, prob: np.ndarray, group: np.ndarray | None = None
) -> dict[str, float]:
    """All metrics of one evaluation set."""
    out = {"auc": auc(label, prob), "logloss": logloss(label, prob), "rows": float(len(label))}
    out["gauc"] = gauc(label, prob, group) if group is not None else float("nan")
    return out
