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


def gate_heatmap(ins: Inspection, path: str | Path) -> None:
    """Slots x fields: the share of instances whose gate is open."""
    grid = [s.field_share for s in ins.slots]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(ins.fields) + 2), 0.45 * len(grid) + 1.5))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(ins.fields)), ins.fields, rotation=60, ha="right")
    ax.set_yticks(range(len(grid)), [f"slot {s.slot}" for s in ins.slots])
    ax.set_title("knowledge patterns: share of instances with the field's gate open")
    fig.colorbar(im, ax=ax, fraction=0.03)
    _save(fig, path)
