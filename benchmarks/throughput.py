"""Training and inference throughput of the six models on Criteo-like synthetic rows.

    python benchmarks/throughput.py [--rows 1000000] [--models deepfm,dcn,...]
                                    [--embedding shared|per_field] [--threads 2]

Setting of issue 3: 1 M rows, 26 categorical fields of 10,000 ids and 13 numeric fields
(standardized floats, as FuxiCTR's numeric features), embedding 16, MLP [400, 400, 400],
Adam 1e-3, batch 4096, 2 threads. Each model runs in a fresh process (its own peak RSS):
one full training epoch over the rows (samples/s), then inference over them, then the AUC on
a held-out 10 % (so that speed is compared at a stated accuracy).

DIN needs behaviour sequences, which the Criteo-like rows do not have: it runs on
MovieLens-100K instead (13 fields, two 20-long histories; the figure is marked so).

Reference figures measured on this 2-core machine with the same settings (issue 3):
FuxiCTR 2.3.10 trains DeepFM at 10.8 k samples/s, DCN 10.6 k, PNN 7.3 k, AutoInt 7.2 k;
DeepCTR-Torch 0.3.0 DeepFM at 13.0 k.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUXICTR = {"deepfm": 10_800, "dcn": 10_600, "pnn": 7_300, "autoint": 7_200}
MODELS = ["deepfm", "dcn", "pnn", "xdeepfm", "autoint", "din"]


def prepare_data(rows: int, out: Path) -> None:
    from fined.data.prepare import prepare
    from fined.data.schema import FeatureSpec, PeriodSpec, PrepareConfig

    features = [FeatureSpec(name=f"f{j:02d}", kind="categorical") for j in range(26)]
    features += [
        FeatureSpec(name=f"x{j:02d}", kind="numeric", transform="scale") for j in range(13)
    ]
    options = {
        "n_rows": rows,
        "n_periods": 2,
        "n_fields": 26,
        "cardinality": 10_000,
        "n_numeric": 13,
        "zipf": 1.05,
        "drift": 0.0,
        "seed": 0,
    }
    prepare(
        PrepareConfig(
            dataset="synthetic",
            options=options,
            features=features,
            periods=PeriodSpec(by="day", holdout_fraction=0.1),
        ),
        out,
    )


def per_field(model):
    """Swap the shared table for one table per id field (same shapes, same init)."""
    import torch
    from torch import nn

    emb = model.embedding
    sizes = [f.vocab_size for f in model.feature_map.id_features]
    tables = nn.ModuleList(nn.Embedding(n, emb.dim) for n in sizes)
    for t in tables:
        nn.init.normal_(t.weight, std=1e-4)
    emb.tables = tables
    del emb.table

    def forward(batch):
        ids = batch.ids.long()
        parts = [t(ids[:, j]) for j, t in enumerate(tables)]
        idf = torch.stack(parts, 1)
        if batch.floats.shape[1]:
            idf = torch.cat([idf, batch.floats.unsqueeze(-1) * emb.float_vectors], 1)
        return idf

    emb.forward = forward
    return model


def run_one(name: str, data_dir: Path, threads: int, layout: str, max_steps: int | None) -> dict:
    """One model through the public trainer, as a user runs it: ``Trainer.fit`` for one epoch
    (samples/s from its own epoch time: the feed, shuffling, every step; the validation pass
    after the epoch is not counted), then ``Trainer.predict`` over the same rows."""
    import torch

    from fined.data.loader import PeriodStore
    from fined.models import build_model
    from fined.train.config import TrainConfig
    from fined.train.trainer import Trainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    store = PeriodStore(data_dir)
    every = range(len(store.feature_map.periods))
    train = store.load(every, "train")
    valid = store.load(every, "holdout")
    overrides = {"embedding_dim": 16, "mlp": [400, 400, 400]}
    model = build_model(name, store.feature_map, overrides)
    if layout == "per_field":
        model = per_field(model)
    if max_steps:  # slow models: time a fixed number of batches instead of the whole epoch
        train = train.slice(0, min(len(train), max_steps * 4096))
    config = TrainConfig(batch_size=4096, lr=1e-3, epochs=1, patience=1, progress=False,
                         threads=threads)  # fmt: skip
    trainer = Trainer(model, config)
    fit = trainer.fit(train, valid)
    t0 = time.perf_counter()
    trainer.predict(train)
    infer_s = time.perf_counter() - t0
    return {
        "model": name,
        "layout": layout,
        "train_sps": fit.train_samples_per_second,
        "infer_sps": len(train) / infer_s,
        "valid_auc": fit.best["auc"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--embedding", choices=["shared", "per_field"], default="shared")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None, help="time only this many batches")
    p.add_argument("--child")
    p.add_argument("--data", type=Path)
    args = p.parse_args()
    if args.child:
        print(
            json.dumps(run_one(args.child, args.data, args.threads, args.embedding, args.max_steps))
        )
        return
    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "?",
        )
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} cores; threads {args.threads}; {args.rows:,} rows; "
        f"embedding layout: {args.embedding}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare_data(args.rows, data)
        movielens = Path(tmp) / "movielens"
        if "din" in args.models.split(","):
            from fined.data.prepare import prepare
            from fined.data.schema import PrepareConfig

            prepare(PrepareConfig(dataset="movielens100k"), movielens)
        print(
            f"{'model':10s} {'train/s':>10s} {'infer/s':>11s} {'valid AUC':>9s} {'peak RSS':>9s} "
            f"{'vs FuxiCTR':>10s}"
        )
        failed: list[str] = []
        for name in args.models.split(","):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--data",
                    str(movielens if name == "din" else data),
                    "--threads",
                    str(args.threads),
                    "--embedding",
                    args.embedding,
                    *(["--max-steps", str(args.max_steps)] if args.max_steps else []),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{name:10s} failed: {last}")
                failed.append(name)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = FUXICTR.get(name)
            ratio = f"{r['train_sps'] / ref:.2f}x" if ref else "-"
            name = "din (ML)" if name == "din" else name
            print(
                f"{name:10s} {r['train_sps']:10,.0f} {r['infer_sps']:11,.0f} {r['valid_auc']:9.4f} "
                f"{r['peak_rss_gb']:7.2f}GB {ratio:>10s}"
            )
    if failed:  # a benchmark that could not measure is a failure, not a line in a table
        sys.exit(f"error: {', '.join(failed)} failed (above)")


if __name__ == "__main__":
    main()
