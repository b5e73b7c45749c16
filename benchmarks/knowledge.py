"""The knowledge base's cost and value.

    python benchmarks/knowledge.py [--rows 200000] [--models deepfm,dcn,pnn,xdeepfm,autoint,din]

1. Cost: inference samples/s of a base model alone and fed by a frozen KB, on the same
   rows, best of interleaved repeats. The KB query + adaptor's time a row (FINED's minus the
   base model's, so the base's work on the knowledge tokens counts as the KB's) over the base
   model's (target <= 1.3x), and FINED's whole time over the base's. Measured with the
   shipped model defaults (MLP [400, 400, 400]) and with the small MLP of part 3, next to
   the same ratios of matmul FLOPs per row. DIN runs on MovieLens-100K with its own KB.
2. Size: the KB's bytes (safetensors) against the bytes of the past data it replaces (the
   encoded Parquet files of those periods, and their in-memory arrays).
3. Value: on the synthetic recurring-pattern split (KB from periods 0-1 where every planted
   pattern is active; models trained on periods 2-3 where half of them are off, the epoch
   chosen on their held-out tails; tested on 4-5 where they are back), the test AUC of each
   model without the KB, with it, and with it plus the adaptor's KB distillation
   (``--kb-distill``, the weight issue 5's protocol runs used). DIN needs behaviour sequences:
   it runs on MovieLens-100K (KB from 1997-09..12, train 1998-01..02, test 1998-03..04).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

SMALL = {"embedding_dim": 16, "mlp": [128, 64]}


def rates(models: dict, data, reps: int = 7) -> dict[str, float]:
    """Best inference samples/s of each model over ``reps`` interleaved passes."""
    from fined.data.loader import BatchLoader

    batches = list(BatchLoader(data, 4096))
    best = dict.fromkeys(models, 0.0)
    with torch.no_grad():
        for _ in range(reps):
            for name, model in models.items():
                model.eval()
                t0 = time.perf_counter()
                for batch in batches:
                    model(batch)
                best[name] = max(best[name], len(data) / (time.perf_counter() - t0))
    return best


def flops_per_row(model, data) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    batch = data.slice(0, 1024)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    return counter.get_total_flops() / len(batch)


def fined_model(store, kb, model: str, settings: dict, kb_distill: float = 0.0):
    from fined.knowledge.adaptor import AdaptorConfig
    from fined.knowledge.fined_model import FinedModel
    from fined.models import build_model

    adaptor = AdaptorConfig(kb_distill=kb_distill)
    base = build_model(model, store.feature_map, settings, knowledge_tokens=adaptor.tokens)
    return FinedModel(base, kb, adaptor)


def cost(store, kb, model: str, settings: dict, data) -> str:
    from fined.models import build_model

    torch.manual_seed(1)
    nets = {
        "base": build_model(model, store.feature_map, settings),
        "fined": fined_model(store, kb, model, settings),
    }
    r = rates(nets, data)
    f0, f1 = flops_per_row(nets["base"], data), flops_per_row(nets["fined"], data)
    slowdown = r["base"] / r["fined"]  # FINED's time a row over the base model's
    return (
        f"| {model} | {'[128, 64]' if settings else '[400, 400, 400]'} | {r['base']:,.0f} | "
        f"{r['fined']:,.0f} | **{slowdown - 1:.2f}x** | {slowdown:.2f}x | {f0 / 1e3:,.0f}k | "
        f"{f1 / 1e3:,.0f}k | {(f1 - f0) / f0:.2f}x |"
    )


def value(store, kb, model: str, train_p, test_p, known: int, train_cfg, kb_distill) -> list:
    from fined.models import build_model
    from fined.train.trainer import Trainer

    train = store.load(train_p, "train", known_through=known)
    valid = store.load(train_p, "holdout", known_through=known)
    test = store.load(test_p, known_through=known)
    aucs = []
    for variant in ("none", "kb", "kb+distill"):
        torch.manual_seed(1)
        if variant == "none":
            net = build_model(model, store.feature_map, SMALL)
        else:
            net = fined_model(store, kb, model, SMALL, kb_distill if variant != "kb" else 0.0)
        trainer = Trainer(net, train_cfg)
        trainer.fit(train, valid)
        aucs.append(trainer.evaluate(test)["auc"])
    return aucs


def main() -> None:
    from fined.data.loader import PeriodStore
    from fined.data.prepare import prepare
    from fined.data.schema import PrepareConfig
    from fined.knowledge.knowledge_base import KBConfig
    from fined.train.config import TrainConfig
    from fined.train.kb_builder import build_knowledge_base

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--models", default="deepfm,dcn,pnn,xdeepfm,autoint,din")
    p.add_argument("--kb-distill", type=float, default=0.2)
    p.add_argument("--skip-value", action="store_true", help="cost and size only")
    p.add_argument("--slots", type=int, default=KBConfig().slots, help="the KB's K")
    args = p.parse_args()
    torch.set_num_threads(2)
    train_cfg = TrainConfig(batch_size=1024, lr=3e-3, epochs=10, patience=2, progress=False, seed=1)
    kb_train = TrainConfig(batch_size=1024, lr=3e-3, epochs=20, patience=3, progress=False, seed=2)
    print(f"{os.cpu_count()} cores; synthetic recurring split, {args.rows:,} rows, 6 daily periods")
    models = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options = {"n_rows": args.rows, "n_periods": 6, "seed": 0}
        prepare(PrepareConfig(dataset="synthetic", options=options), tmp / "syn")
        store = PeriodStore(tmp / "syn")
        kb_config = KBConfig(slots=args.slots)
        built = build_knowledge_base(store, [0, 1], kb_config, kb_train, tmp / "kb")
        kb_bytes = (tmp / "kb" / "kb.safetensors").stat().st_size
        past_parquet = sum(
            (store.directory / store.feature_map.periods[i].file).stat().st_size for i in (0, 1)
        )
        past = store.load([0, 1])
        past_memory = sum(
            t.numel() * t.element_size() for t in (past.ids, past.floats, past.label, past.time)
        )
        c = built.kb.config
        auc = built.fit.best["auc"]
        print(f"KB: {kb_bytes:,} bytes ({c.slots} slots x {c.dim}); valid AUC {auc:.4f}")
        print(
            f"past data it replaces ({len(past):,} rows): {past_parquet:,} bytes as Parquet "
            f"({past_parquet / kb_bytes:.2f}x the KB), {past_memory:,} bytes in memory "
            f"({past_memory / kb_bytes:.2f}x)"
        )
        test = store.load([4, 5], known_through=3)
        print("\n| model | MLP | inference/s, no KB | with KB | KB + adaptor / base", end=" ")
        print("| FINED / base | FLOPs/row, no KB | with KB | KB + adaptor FLOPs / base |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for model in (m for m in models if m != "din"):
            for settings in ({}, SMALL):
                print(cost(store, built.kb, model, settings, test), flush=True)
        if "din" in models:  # DIN needs behaviour sequences: MovieLens, with its own KB
            prepare(PrepareConfig(dataset="movielens100k"), tmp / "ml")
            ml = PeriodStore(tmp / "ml")
            ml_kb = build_knowledge_base(ml, [0, 1, 2, 3], kb_config, kb_train).kb
            ml_test = ml.load([6, 7], known_through=5)
            for settings in ({}, SMALL):
                print(cost(ml, ml_kb, "din", settings, ml_test), flush=True)
        if args.skip_value:
            return
        distill = f"KB + distill {args.kb_distill}"
        print(f"\n| model | test AUC, no KB | with KB | gain | {distill} | gain |")
        print("|---|---:|---:|---:|---:|---:|")
        for model in models:
            if model == "din":
                aucs = value(ml, ml_kb, "din", [4, 5], [6, 7], 5, train_cfg, args.kb_distill)
                model = "din (MovieLens)"
            else:
                aucs = value(store, built.kb, model, [2, 3], [4, 5], 3, train_cfg, args.kb_distill)
            a0, a1, a2 = aucs
            print(
                f"| {model} | {a0:.4f} | {a1:.4f} | {a1 - a0:+.4f} | {a2:.4f} | {a2 - a0:+.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
