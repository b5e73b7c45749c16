"""Test AUC / LogLoss of the six models on MovieLens-100K, mean ± std over seeds.

    python benchmarks/movielens_accuracy.py [--seeds 1,2,3] [--models deepfm,...]

Split (issue 3): train = every rating before 1998-03-01 minus its last 10 % by time (the
validation set, which alone drives early stopping), test = 1998-03-01 onward, with ids first
seen after the training periods mapped to OOV. Settings: embedding 16, MLP [400, 400, 400],
Adam 1e-3, batch 4096, early stopping on validation AUC (patience 2).

Two feature sets: ``full`` (all features of the adapter: user and item attributes, all
genres, weekday and hour, the 20 last items and their genres before each rating) and
``reduced`` (the FuxiCTR reference's features: user_id, item_id, age, gender, occupation,
zip prefix, release year, first genre), so that the comparison with FuxiCTR's DeepFM (0.699
test AUC on this split, seed 1) is like for like.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REDUCED = ["user_id", "item_id", "age", "gender", "occupation", "zip", "year", "genre"]
MODELS = ["deepfm", "dcn", "pnn", "xdeepfm", "autoint", "din"]


def prepare_sets(root: Path) -> dict[str, Path]:
    from fined.data.datasets.movielens import MovieLensSource
    from fined.data.prepare import prepare
    from fined.data.schema import PrepareConfig

    full = prepare(PrepareConfig(dataset="movielens100k"), root / "full")
    specs = [
        f
        for f in MovieLensSource(PrepareConfig(dataset="movielens100k")).features
        if f.name in REDUCED
    ]
    prepare(PrepareConfig(dataset="movielens100k", features=specs), root / "reduced")
    del full
    return {"full": root / "full", "reduced": root / "reduced"}


def run(data: Path, model: str, seed: int) -> dict[str, float]:
    import torch

    from fined.data.loader import PeriodStore
    from fined.errors import FinedError
    from fined.models import build_model
    from fined.train.config import TrainConfig
    from fined.train.selection import make_split
    from fined.train.trainer import Trainer

    torch.manual_seed(seed)
    store = PeriodStore(data)
    split = make_split(store, "0:1998-02", "tail:0.1", "1998-03:1998-04")
    try:
        net = build_model(model, store.feature_map, {"embedding_dim": 16, "mlp": [400, 400, 400]})
    except FinedError as err:
        return {"error": str(err)}
    trainer = Trainer(
        net, TrainConfig(lr=1e-3, batch_size=4096, patience=2, seed=seed, progress=False, threads=2)
    )
    t0 = time.perf_counter()
    fit = trainer.fit(split.train, split.valid)
    test = trainer.evaluate(split.test)
    return {
        "auc": test["auc"],
        "logloss": test["logloss"],
        "gauc": test["gauc"],
        "valid_auc": fit.best["auc"],
        "epoch": fit.best_epoch,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sets", default="full,reduced")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{os.cpu_count()} cores; seeds {seeds}")
    fmt = lambda xs: f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        sets = prepare_sets(Path(tmp))
        print("| features | model | test AUC | test LogLoss | test gAUC | valid AUC | epochs | s |")
        print("|---|---|---|---|---|---|---|---|")
        for set_name in args.sets.split(","):
            for model in args.models.split(","):
                runs = [run(sets[set_name], model, s) for s in seeds]
                if "error" in runs[0]:
                    print(f"| {set_name} | {model} | n/a: {runs[0]['error']} | | | | | |")
                    continue

                def col(key: str, runs: list[dict] = runs) -> list[float]:
                    return [r[key] for r in runs]

                print(
                    f"| {set_name} | {model} | {fmt(col('auc'))} | {fmt(col('logloss'))} | "
                    f"{fmt(col('gauc'))} | {fmt(col('valid_auc'))} | "
                    f"{'/'.join(str(e + 1) for e in col('epoch'))} | "
                    f"{statistics.mean(col('seconds')):.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
