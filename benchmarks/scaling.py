"""Scale-out figures: 1 vs 2 processes (DDP), dense vs sparse embedding gradients, and a
capped (hashed) vocabulary against the full one.

    python benchmarks/scaling.py [--rows 2000000] [--big 8000000,4000000] [--zipf 0.8]
                                 [--epochs 1] [--cap 200000]

Data: synthetic, 12 fields of which two are large (by default 8 M and 4 M possible ids drawn
with Zipf 0.8: about 1.7 M distinct ids end up in the vocabularies), planted patterns; DeepFM,
embedding 16, MLP [400, 400, 400], Adam 1e-3, global batch 4096, trained on period 0 and
validated on its held-out tail. The capped run keeps the first ``--cap`` ids of each large
field and hashes the rest into 16,384 buckets. Every configuration runs through the CLI in its
own processes (`fined train`, `--nproc 2` for DDP under torchrun with gloo); figures: training
samples/s (all ranks together), validation AUC, embedding-table bytes, and the peak RSS of the
largest process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL_FIELDS = [60, 40, 30, 20, 20, 12, 12, 10, 8, 8]


def prepare(out: Path, rows: int, big: list[int], zipf: float, cap: int | None) -> None:
    from fined.data.prepare import prepare as run
    from fined.data.schema import FeatureSpec, PrepareConfig

    cardinality = big + SMALL_FIELDS
    options = {"n_rows": rows, "n_periods": 2, "cardinality": cardinality, "zipf": zipf}
    features = None
    if cap is not None:  # the two large fields capped, their tails hashed into buckets
        extra = {"max_vocab": cap, "hash_buckets": 16_384}
        features = [
            FeatureSpec(name=f"f{j:02d}", kind="categorical",
                        source=("user", "item", "context")[j % 3], **(extra if j < 2 else {}))
            for j in range(12)
        ]  # fmt: skip
    run(PrepareConfig(dataset="synthetic", options=options, features=features), out)


def train(data: Path, out: Path, epochs: int, nproc: int, sparse: bool) -> dict:
    cmd = [
        sys.executable, "-m", "fined.cli", "train", "--data", str(data), "--model", "deepfm",
        "--train-periods", "0", "--out", str(out), "--nproc", str(nproc),
        "--set", f"sparse_embedding={str(sparse).lower()}", "--set", f"train.epochs={epochs}",
        "--set", f"train.patience={epochs}", "--set", "train.progress=false",
    ]  # fmt: skip
    # A wrapper process per configuration: the peak RSS of its descendants is this one's.
    # (torchrun gives each of its workers one thread; one process keeps both cores.)
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True
    )
    results = json.loads((out / "results.json").read_text())
    return {
        "samples_per_s": results["train_samples_per_second"],
        "valid_auc": results["metrics"]["valid"]["auc"],
        "peak_rss_gb": int(done.stdout.split()[-1]) / 2**20,
    }


def table_bytes(data: Path) -> int:
    from fined.data.feature_map import FeatureMap

    fmap = FeatureMap.load(data)
    rows = sum({f.vocab: f.vocab_size for f in fmap.features if f.vocab_size}.values())
    return rows * 16 * 4  # embedding 16, float32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--big", default="8000000,4000000")
    p.add_argument("--zipf", type=float, default=0.8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--cap", type=int, default=200_000)
    args = p.parse_args()
    big = [int(x) for x in args.big.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root / "full", args.rows, big, args.zipf, None)
        prepare(root / "capped", args.rows, big, args.zipf, args.cap)
        rows = []
        for name, data, nproc, sparse in [
            ("1 process, dense", "full", 1, False),
            ("1 process, sparse", "full", 1, True),
            ("2 processes (DDP), dense", "full", 2, False),
            ("2 processes (DDP), sparse", "full", 2, True),
            (f"1 process, dense, capped {args.cap:,} + 16,384 buckets", "capped", 1, False),
        ]:
            r = train(root / data, root / f"run{len(rows)}", args.epochs, nproc, sparse)
            r.update(name=name, table_mb=table_bytes(root / data) / 2**20)
            rows.append(r)
            print(json.dumps(r), flush=True)
    base = rows[0]["samples_per_s"]
    print("\n| setting | train samples/s | vs 1 process dense | valid AUC | table MB | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['samples_per_s']:,.0f} | {r['samples_per_s'] / base:.2f}× | "
            f"{r['valid_auc']:.4f} | {r['table_mb']:.1f} | {r['peak_rss_gb']:.2f} GB |"
        )


if __name__ == "__main__":
    main()
