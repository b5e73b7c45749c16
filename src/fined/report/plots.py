"""Figures (PNG, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402

from fined.io import atomic_write_bytes  # noqa: E402
from fined.knowledge.inspection import Inspection  # noqa: E402


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def gate_heatmap(
    ins: Inspection, path: str | Path, title: str = "", planted: list[list[str]] | None = None
) -> None:
    """Slots x fields: the share of instances whose gate is open; ``planted`` (known ground
    truth): each planted field set outlined on the slot that recovers it best."""
    grid = [s.field_share for s in ins.slots]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(ins.fields) + 2), 0.45 * len(grid) + 1.8))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(ins.fields)), ins.fields, rotation=60, ha="right")
    ax.set_yticks(range(len(grid)), [f"slot {s.slot}" for s in ins.slots])
    heading = "knowledge patterns: share of instances with the field's gate open"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    if planted:
        from matplotlib.patches import Rectangle

        from fined.knowledge.inspection import recovery

        for k, (fields, slot, _) in enumerate(recovery(ins, planted)):
            for name in fields:
                if name in ins.fields:
                    x = ins.fields.index(name)
                    ax.add_patch(Rectangle((x - 0.5, slot - 0.5), 1, 1, fill=False,
                                           edgecolor=f"C{k + 1}", linewidth=2))  # fmt: skip
        ax.set_xlabel("outlined: the planted field sets (ground truth), on their best slot")
    fig.colorbar(im, ax=ax, fraction=0.03)
    _save(fig, path)


def _style(strategy: str, knowledge: set[str]) -> dict:
    """FINED variants stand apart: solid and thick; baselines dashed and thin."""
    if strategy in knowledge:
        return {"linewidth": 2.4, "linestyle": "-", "marker": "o"}
    return {"linewidth": 1.2, "linestyle": "--", "marker": ".", "alpha": 0.85}


def test_auc_lines(
    frame, path: str | Path, knowledge: set[str] | None = None, off: set[str] | None = None
) -> None:
    """One panel per model: mean test AUC (over seeds) per test period, a line per strategy.
    ``frame``: polars rows of (strategy, model, test_period, auc), strategies in order.
    ``knowledge``: the strategies that use a KB; ``off``: test periods where the data itself
    says part of the past is absent (the synthetic regimes), shaded."""
    knowledge, off = knowledge or set(), off or set()
    models = list(dict.fromkeys(frame["model"].to_list()))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models) + 2.2, 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        part = frame.filter(frame["model"] == model)
        periods = list(dict.fromkeys(part["test_period"].to_list()))
        for i, name in enumerate(periods):
            if name in off:
                ax.axvspan(i - 0.5, i + 0.5, color="grey", alpha=0.15, linewidth=0)
        for strategy in dict.fromkeys(part["strategy"].to_list()):
            rows = part.filter(part["strategy"] == strategy)
            x = [periods.index(p) for p in rows["test_period"].to_list()]
            ax.plot(x, rows["auc"].to_list(), label=strategy, **_style(strategy, knowledge))
        ax.set_xticks(range(len(periods)), periods, rotation=45, ha="right")
        ax.set_title(f"{model}: test AUC on the next period")
        ax.set_xlabel("test period" + ("  (shaded: planted patterns switched off)" if off else ""))
        ax.set_ylabel("AUC (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path)


def forgetting_heatmaps(
    matrices: dict[str, list[list[float]]],
    labels: list[str],
    path,
    title: str = "AUC",
    centered: bool = False,
) -> None:
    """One panel per strategy: R[t][i] (rows: after period t; columns: held-out slice of
    P_i), each cell's value written in it. ``centered``: differences (a diverging scale
    around 0, e.g. each strategy minus incremental)."""
    n = len(matrices)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.9 * cols, 3.6 * rows), squeeze=False, constrained_layout=True
    )
    values = [v for m in matrices.values() for row in m for v in row if v == v]
    if centered:
        reach = max((abs(v) for v in values), default=0.01) or 0.01
        lo, hi, cmap = -reach, reach, "RdBu"
    else:
        lo, hi = (min(values), max(values)) if values else (0.5, 1.0)
        cmap = "magma"
    im = None
    for ax, (name, grid) in zip(axes.flat, matrices.items(), strict=False):
        im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for r, row in enumerate(grid):
            for c, v in enumerate(row):
                if v == v:
                    shade = (v - lo) / (hi - lo) if hi > lo else 0.5
                    color = (
                        "white"
                        if (shade < 0.45 if not centered else abs(shade - 0.5) > 0.3)
                        else "black"
                    )
                    ax.text(c, r, f"{v:+.3f}" if centered else f"{v:.3f}", ha="center",
                            va="center", fontsize=5.5, color=color)  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        ax.set_yticks(range(len(grid)), labels[len(labels) - len(grid) :], fontsize=7)
        ax.set_xlabel("held-out slice of period", fontsize=8)
        ax.set_ylabel("after training on", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, label=title)
    _save(fig, path)


def auc_against_bytes(frontier, path: str | Path) -> None:
    """Per model, test AUC (top) and BWT (bottom) against the bytes kept from the past (log
    scale): a line per family of strategies, a band of one standard deviation over seeds.
    ``frontier``: the rows of ``report.tables.frontier_table``."""
    models = list(dict.fromkeys(frontier["model"].to_list()))
    fig, axes = plt.subplots(
        2, len(models), figsize=(5.5 * len(models), 7), squeeze=False, sharex="col"
    )
    for col, model in enumerate(models):
        part = frontier.filter(frontier["model"] == model)
        for family in dict.fromkeys(part["family"].to_list()):
            rows = part.filter(part["family"] == family).sort("bytes_kept")
            x = [max(b, 1) for b in rows["bytes_kept"].to_list()]
            for ax, measure in ((axes[0][col], "auc"), (axes[1][col], "bwt")):
                mean = rows[f"{measure}_mean"].to_numpy()
                std = rows[f"{measure}_std"].to_numpy()
                (line,) = ax.plot(x, mean, marker="o", label=family)
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        axes[0][col].set_title(f"{model}: what the bytes kept from the past buy")
        axes[0][col].set_ylabel("test AUC (mean ± std over seeds)")
        axes[1][col].set_ylabel("BWT")
        axes[1][col].set_xlabel("bytes kept from the past")
        for ax in axes[:, col]:
            ax.set_xscale("symlog", linthresh=1024)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    _save(fig, path)
