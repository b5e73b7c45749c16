"""What ``fined data describe`` shows: periods, rows, CTR, vocabularies, id drift."""

from __future__ import annotations

from rich.table import Table

from fined.data.feature_map import FeatureMap

_DRIFT_COLUMNS = 4  # id features shown in the "new ids" table (the largest vocabularies)


def _when(fmap: FeatureMap, t: int) -> str:
    if fmap.time_is_row_number:
        return f"row {t:,}"
    import numpy as np

    return str(np.datetime64(t, "s").astype("datetime64[m]")).replace("T", " ")


def period_table(fmap: FeatureMap) -> Table:
    drift = sorted(
        (f for f in fmap.features if f.kind == "categorical"), key=lambda f: -f.vocab_size
    )[:_DRIFT_COLUMNS]
    table = Table(
        title=f"{fmap.dataset}: {len(fmap.periods)} periods, "
        f"{sum(p.rows for p in fmap.periods):,} rows"
    )
    for name in ("#", "period", "first", "last", "rows", "held out", "CTR"):
        table.add_column(
            name, justify="right" if name in ("#", "rows", "held out", "CTR") else "left"
        )
    for f in drift:
        table.add_column(f"new\n{f.name}", justify="right")
    for p in fmap.periods:
        shares = [f"{100 * p.new_id_share.get(f.name, 0.0):.1f}%" for f in drift]
        table.add_row(
            str(p.index),
            p.name,
            _when(fmap, p.time_min),
            _when(fmap, p.time_max),
            f"{p.rows:,}",
            f"{p.holdout_rows:,}",
            f"{p.ctr:.3f}",
            *shares,
        )
    total = sum(p.rows for p in fmap.periods)
    pos = sum(p.positives for p in fmap.periods)
    table.add_section()
    table.add_row(
        "",
        "all",
        "",
        "",
        f"{total:,}",
        f"{sum(p.holdout_rows for p in fmap.periods):,}",
        f"{pos / total:.3f}",
        *[""] * len(drift),
    )
    table.caption = (
        "new X: share of the period's rows whose X is unknown to a model trained on "
        "the earlier periods (not in their vocabulary, or rare -> OOV)"
    )
    return table


def feature_table(fmap: FeatureMap) -> Table:
    table = Table(title=f"features (fingerprint {fmap.fingerprint})")
    for name in ("feature", "kind", "source", "vocabulary", "size", "max_len", "transform"):
        table.add_column(name, justify="right" if name in ("size", "max_len") else "left")
    for f in fmap.features:
        transform = ""
        if f.transform:
            t = f.transform
            transform = (
                f"{len(t['boundaries']) + 1} quantile buckets"
                if t["kind"] == "bucketize"
                else f"scaled (mean {t['mean']:.3g}, std {t['std']:.3g})"
            )
        table.add_row(
            f.name,
            f.kind,
            f.source,
            f.vocab if f.vocab != f.name else "own",
            f"{f.vocab_size:,}" if f.vocab_size else "-",
            str(f.max_len) if f.kind == "sequence" else "",
            transform,
        )
    return table
