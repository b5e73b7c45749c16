"""The knowledge base's cost and value.

    python benchmarks/knowledge.py [--rows 200000] [--models deepfm,dcn,pnn,xdeepfm,autoint]

1. Cost: inference samples/s of a base model alone and fed by a frozen KB (KB query +
   adaptor), on the same rows; the ratio is the per-sample overhead (target <= 1.3x).
2. Size: the KB's bytes (safetensors) against the bytes of the past data it replaces (the
   encoded Parquet files of those periods, and their in-memory arrays).
3. Value: on the synthetic recurring-pattern split (KB from periods 0-1 where every planted
   pattern is active; models trained on periods 2-3 where half of them are off; tested on
   4-5 where they are back), the test AUC of each model without and with the KB. DIN needs
   behaviour sequences: it runs on MovieLens-100K (KB from 1997-09..12, train 1998-01..02,
   test 1998-03..04).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

SMALL = {"embedding_dim": 16, "mlp": [128, 64]}


def infer_rate(model, data, reps: int = 3) -> float:
    from fined.data.loader import BatchLoader

    model.eval()
    best = 0.0
    with torch.no_grad():
        for _ in range(reps):
            t0 = time.perf_counter()
            for batch in BatchLoader(data, 4096):
                model(batch)
            best = max(best, len(data) / (time.perf_counter() - t0))
    return best


def compare(
    store, kb, model: str, train_p, test_p, known: int, train_cfg
) -> tuple[float, float, float, float]:
    from fined.knowledge.adaptor import AdaptorConfig, FinedModel
    from fined.models import build_model
    from fined.train.trainer import Trainer

    train = store.load(train_p, "train", known_through=known)
    valid = store.load(train_p, "holdout", known_through=known)
    test = store.load(test_p, known_through=known)
    out = []
    for with_kb in (False, True):
        torch.manual_seed(1)
        if with_kb:
            ad = AdaptorConfig()
            net = FinedModel(
                build_model(model, store.feature_map, SMALL, knowledge_tokens=ad.tokens), kb, ad
            )
        else:
            net = build_model(model, store.feature_map, SMALL)
        trainer = Trainer(net, train_cfg)
        trainer.fit(train, valid)
        out += [trainer.evaluate(test)["auc"], infer_rate(net, test)]
    return out[0], out[2], out[1], out[3]


def main() -> None:
    from fined.data.loader import PeriodStore
    from fined.data.prepare import prepare
    from fined.data.schema import PrepareConfig
    from fined.knowledge.base import KBConfig
    from fined.train.kb import build_knowledge_base
    from fined.train.trainer import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--models", default="deepfm,dcn,pnn,xdeepfm,autoint,din")
    args = p.parse_args()
    torch.set_num_threads(2)
    train_cfg = TrainConfig(batch_size=1024, lr=3e-3, epochs=10, patience=2, progress=False, seed=1)
    print(f"{os.cpu_count()} cores; synthetic recurring split, {args.rows:,} rows, 6 daily periods")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare(
            PrepareConfig(
                dataset="synthetic", options={"n_rows": args.rows, "n_periods": 6, "seed": 0}
            ),
            tmp / "syn",
        )
        store = PeriodStore(tmp / "syn")
        torch.manual_seed(0)
        built = build_knowledge_base(store, [0, 1], KBConfig(), train_cfg, tmp / "kb")
        kb_bytes = (tmp / "kb" / "kb.safetensors").stat().st_size
        past_parquet = sum(
            (store.directory / store.feature_map.periods[i].file).stat().st_size for i in (0, 1)
        )
        past = store.load([0, 1])
        past_memory = sum(
            t.numel() * t.element_size() for t in (past.ids, past.floats, past.label, past.time)
        )
        print(
            f"KB: {kb_bytes:,} bytes ({built.kb.config.slots} slots x {built.kb.config.dim}); "
            f"valid AUC {built.fit.best['auc']:.4f}"
        )
        print(
            f"past data it replaces ({len(past):,} rows): {past_parquet:,} bytes as Parquet "
            f"({past_parquet / kb_bytes:.2f}x the KB), {past_memory:,} bytes in memory "
            f"({past_memory / kb_bytes:.2f}x)"
        )
        print("| model | test AUC, no KB | with KB | gain | inference/s, no KB | with KB | cost |")
        print("|---|---|---|---|---|---|---|")
        movielens = None
        for model in args.models.split(","):
            if model == "din":
                if movielens is None:
                    prepare(PrepareConfig(dataset="movielens100k"), tmp / "ml")
                    ml = PeriodStore(tmp / "ml")
                    ml_kb = build_knowledge_base(ml, [0, 1, 2, 3], KBConfig(), train_cfg).kb
                    movielens = (ml, ml_kb)
                a0, a1, r0, r1 = compare(
                    movielens[0], movielens[1], "din", [4, 5], [6, 7], 5, train_cfg
                )
                model = "din (MovieLens)"
            else:
                a0, a1, r0, r1 = compare(store, built.kb, model, [2, 3], [4, 5], 3, train_cfg)
            row = [
                model,
                f"{a0:.4f}",
                f"{a1:.4f}",
                f"{a1 - a0:+.4f}",
                f"{r0:,.0f}",
                f"{r1:,.0f}",
                f"{r0 / r1:.2f}x",
            ]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
