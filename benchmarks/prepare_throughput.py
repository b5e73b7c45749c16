"""Data-layer throughput: encoding and batching rows/s, and peak memory.

    python benchmarks/prepare_throughput.py [--rows 10000000]

Measures, on the synthetic drift source (12 categorical fields, 2 numeric):
1. generation alone (one pass of the source, no encoding);
2. ``prepare`` end to end (two passes of the source + vocabularies + Parquet), and the
   encoder's own rate, with the two generation passes subtracted;
3. ``prepare`` from Parquet files through the ``table`` adapter (the production path: a
   raw log already on disk), in a fresh process for an honest peak RSS;
4. batching: shuffled 4096-row batches sliced from the loaded periods.

    python benchmarks/prepare_throughput.py --taobao 0.02,0.1

instead prepares Taobao-shaped raw tables (``taobao_tables.py``: the paper's Ali Display log,
``taobao_ad_raw``, at those fractions of its 723 M behaviour rows) in a fresh process each,
and states peak RSS, rows/s and the growth of the peak per 10 M behaviour rows, projected to
the full log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def child(mode: str, rows: int, work: Path) -> dict:
    """Run one measurement in a fresh process (so peak RSS is its own)."""
    from fined.data.datasets import open_source
    from fined.data.prepare import prepare
    from fined.data.schema import FeatureSpec, PeriodSpec, PrepareConfig

    opts = {"n_rows": rows, "n_periods": 8, "n_numeric": 2, "seed": 0}
    cfg = PrepareConfig(dataset="synthetic", options=opts)
    t0 = time.perf_counter()
    if mode == "generate":
        n = sum(b.num_rows for b in open_source(cfg).batches(cfg.chunk_rows))
    elif mode == "prepare":
        n = sum(p.rows for p in prepare(cfg, work / "synthetic").periods)
    elif mode == "write_raw":
        writer = None
        for b in open_source(cfg).batches(cfg.chunk_rows):
            writer = writer or pq.ParquetWriter(work / "raw.parquet", b.schema)
            writer.write_table(pa.Table.from_batches([b]))
        writer.close()
        n = rows
    elif mode == "prepare_table":
        feats = [FeatureSpec(name=f"f{j:02d}", kind="categorical") for j in range(12)]
        feats += [FeatureSpec(name=f"x{j:02d}", kind="numeric") for j in range(2)]
        table_cfg = PrepareConfig(
            dataset="table",
            options={"path": str(work / "raw.parquet"), "label": "label", "time": "time"},
            periods=PeriodSpec(by="day"),
            features=feats,
        )
        n = sum(p.rows for p in prepare(table_cfg, work / "table").periods)
    elif mode == "batch":
        from fined.data.loader import BatchLoader, PeriodStore

        torch.set_num_threads(2)
        store = PeriodStore(work / "synthetic")
        data = store.load(range(len(store.feature_map.periods)), part="train")
        t0 = time.perf_counter()
        n = 0
        for batch in BatchLoader(data, 4096, shuffle=True, seed=0):
            n += len(batch)
    elif mode == "taobao":
        cfg = PrepareConfig(dataset="taobao_ad_raw", options={"path": str(work / "raw")})
        n = sum(p.rows for p in prepare(cfg, work / "taobao").periods)
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    return {"mode": mode, "rows": n, "seconds": seconds, "peak_rss_gb": peak_rss_gb()}


def measure(mode: str, rows: int, work: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--rows", str(rows), "--work", str(work)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def taobao(scales: list[float]) -> None:
    """Peak RSS and rate of ``taobao_ad_raw`` at each fraction of the real log."""
    from taobao_tables import REAL, write_tables

    rows = []
    for scale in scales:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            counts = write_tables(work / "raw", scale)
            size = sum(f.stat().st_size for f in (work / "raw").iterdir()) / 2**30
            got = measure("taobao", 0, work)
        events, samples = counts["behavior_log"], counts["raw_sample"]
        assert got["rows"] == samples, got
        rows.append((events, samples, size, got["seconds"], got["peak_rss_gb"]))
    print(f"{'behaviour rows':>15s} {'impressions':>12s} {'CSV':>8s} {'seconds':>8s} "
          f"{'log rows/s':>12s} {'peak RSS':>9s}")  # fmt: skip
    for events, samples, size, seconds, peak in rows:
        print(f"{events:15,d} {samples:12,d} {size:6.2f} GB {seconds:8.1f} "
              f"{events / seconds:12,.0f} {peak:6.2f} GB")  # fmt: skip
    for (e0, _, _, _, p0), (e1, _, _, _, p1) in zip(rows, rows[1:], strict=False):
        growth = (p1 - p0) / (e1 - e0) * 10_000_000
        full = p1 + growth * (REAL["events"] - e1) / 10_000_000
        print(
            f"{e0:,} -> {e1:,} rows: peak RSS grows {growth * 1024:.1f} MB per 10 M "
            f"behaviour rows; at that rate the full {REAL['events']:,} rows: {full:.2f} GB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--taobao", help="fractions of the real Taobao log, e.g. 0.02,0.1")
    parser.add_argument("--child")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.work)))
        return

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}")
    if args.taobao:
        taobao([float(s) for s in args.taobao.split(",")])
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gen = measure("generate", args.rows, work)
        prep = measure("prepare", args.rows, work)
        measure("write_raw", args.rows, work)
        table = measure("prepare_table", args.rows, work)
        batch = measure("batch", args.rows, work)
    n = args.rows
    encode_only = prep["seconds"] - 2 * gen["seconds"]
    lines = [
        ("synthetic generation (1 pass)", n / gen["seconds"], gen["peak_rss_gb"]),
        ("prepare synthetic, end to end (2 passes)", n / prep["seconds"], prep["peak_rss_gb"]),
        ("  encoder alone (generation subtracted)", n / encode_only, None),
        ("prepare from Parquet (table adapter)", n / table["seconds"], table["peak_rss_gb"]),
        ("batching (4096, shuffled)", batch["rows"] / batch["seconds"], batch["peak_rss_gb"]),
    ]
    print(f"{n:,} rows")
    print(f"{'stage':45s} {'rows/s':>14s} {'peak RSS':>10s}")
    for name, rate, rss in lines:
        print(f"{name:45s} {rate:14,.0f} {'' if rss is None else f'{rss:.2f} GB':>10s}")


if __name__ == "__main__":
    main()
