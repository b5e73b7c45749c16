"""Taobao-shaped raw tables (Tianchi dataset 56's four CSV files) at a fraction of the real size.

    python benchmarks/taobao_tables.py OUT_DIR --scale 0.1

At ``--scale 1.0`` the shape of the real log: 26.6 M impressions over 8 days, 723 M behaviour
events over 22 days, 1.14 M users, 847 k ads, 1.06 M user profiles, ~12 k categories and
~460 k brands. Users, ads and profiles scale with the rows, so each user keeps the real
~630 events. Both big tables are shuffled (the real files are not sorted by user or time),
``NULL`` brands appear in both, empty profile values and users without a profile too. Written
in chunks, so generation itself needs little memory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from fined.data.datasets.taobao import PROFILE

REAL = {"samples": 26_557_961, "events": 723_268_134, "users": 1_141_729, "ads": 846_811}
PROFILES = 1_061_768
CATES, BRANDS = 12_968, 460_561
DAY = 86_400
LOG_START = 1_492_790_400  # 2017-04-21 16:00 UTC: 2017-04-22 00:00 in China
SAMPLE_START = LOG_START + 14 * DAY  # impressions: the last 8 of the log's 22 days
CHUNK = 4_000_000


def _nullable(rng: np.random.Generator, values: np.ndarray, share: float) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < share)


def _write(path: Path, chunks) -> None:
    writer = None
    for table in chunks:
        if writer is None:
            writer = pacsv.CSVWriter(
                path, table.schema, write_options=pacsv.WriteOptions(quoting_style="none")
            )
        writer.write_table(table)
    assert writer is not None
    writer.close()


def write_tables(out: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """Write the four files into ``out``; returns the row counts."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = {k: max(1, round(v * scale)) for k, v in REAL.items()}
    n_profiles = max(1, round(PROFILES * scale))

    def events():
        left = n["events"]
        while left:
            m = min(CHUNK, left)
            left -= m
            yield pa.table(
                {
                    "user": rng.integers(1, n["users"] + 1, m),
                    "time_stamp": LOG_START + rng.integers(0, 22 * DAY, m),
                    "btag": pa.array(["pv", "cart", "fav", "buy"]).take(
                        rng.choice(4, m, p=[0.9, 0.04, 0.03, 0.03])
                    ),
                    "cate": rng.integers(1, CATES + 1, m),
                    "brand": _nullable(rng, rng.integers(1, BRANDS + 1, m), 0.05),
                }
            )

    def samples():
        left = n["samples"]
        while left:
            m = min(CHUNK, left)
            left -= m
            clk = (rng.random(m) < 0.05).astype(np.int64)
            yield pa.table(
                {
                    "user": rng.integers(1, n["users"] + 1, m),
                    "time_stamp": SAMPLE_START + rng.integers(0, 8 * DAY, m),
                    "adgroup_id": rng.integers(1, n["ads"] + 1, m),
                    "pid": pa.array(["430548_1007", "430539_1007"]).take(rng.integers(0, 2, m)),
                    "nonclk": 1 - clk,
                    "clk": clk,
                }
            )

    def ads():
        m = n["ads"]
        yield pa.table(
            {
                "adgroup_id": np.arange(1, m + 1),
                "cate_id": rng.integers(1, CATES + 1, m),
                "campaign_id": rng.integers(1, max(2, m // 2), m),
                "customer": rng.integers(1, max(2, m // 3), m),
                "brand": _nullable(rng, rng.integers(1, BRANDS + 1, m), 0.3),
                "price": np.round(rng.lognormal(5, 1.5, m), 2),
            }
        )

    def profiles():
        m = n_profiles
        cols = {"userid": rng.permutation(n["users"])[:m] + 1}
        for name in PROFILE:
            cols[name] = _nullable(rng, rng.integers(0, 5, m), 0.05)
        cols[f"{PROFILE[-1]} "] = cols.pop(PROFILE[-1])  # the real header's trailing space
        yield pa.table(cols)

    _write(out / "behavior_log.csv", events())
    _write(out / "raw_sample.csv", samples())
    _write(out / "ad_feature.csv", ads())
    _write(out / "user_profile.csv", profiles())
    return {"raw_sample": n["samples"], "behavior_log": n["events"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = write_tables(args.out, args.scale, args.seed)
    print(f"wrote {rows} to {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
