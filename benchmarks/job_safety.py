"""``fined train --kb`` against its base model at every budget of passes and KB quality.

    python benchmarks/job_safety.py [--seeds 1,2] [--rows 200000] [--out DIR]

The synthetic recurring log (200,000 rows, 6 daily periods; two of the four planted patterns
off in periods 2-3, back in 4-5). A KB of periods 0-1 trained exactly 1 or 3 epochs; jobs
train DeepFM (embedding 16, MLP [128, 64]) on periods 2-3 for exactly 1, 2 or 3 epochs,
with the KB (as shipped: the forward check on period 3 decides whether FINED or the base
model is trained) and without it, and are tested on periods 4-5 (never used for a choice).
The bar: FINED's job >= its base model's - 0.002 in every cell. Exits 1 when a cell misses
it. Writes ``job_safety.csv`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BAR = -0.002


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path("runs/job_safety"))
    args = parser.parse_args()
    import polars as pl

    from fined.data.loader import PeriodStore
    from fined.data.prepare import prepare
    from fined.data.schema import PrepareConfig
    from fined.knowledge.knowledge_base import KBConfig
    from fined.train.config import KBTrainConfig
    from fined.train.job import train_model
    from fined.train.kb_builder import build_knowledge_base

    data = args.out / "data"
    if not (data / "feature_map.json").is_file():
        options = {"n_rows": args.rows, "n_periods": 6, "seed": 0}
        prepare(PrepareConfig(dataset="synthetic", options=options), data)
    store = PeriodStore(data)
    sizes = {"embedding_dim": 16, "mlp": [128, 64]}
    rows, missed = [], 0
    for seed in [int(s) for s in args.seeds.split(",")]:
        for kb_epochs in (1, 3):
            kb_dir = args.out / f"kb_{kb_epochs}_seed{seed}"
            if not (kb_dir / "kb.json").is_file():
                # every epoch selectable: a KB of 1 epoch has no room for the L0 ramp
                kb_train = KBTrainConfig(epochs=kb_epochs, patience=kb_epochs, seed=seed,
                                         progress=False)  # fmt: skip
                build_knowledge_base(store, [0, 1], KBConfig(l0_warmup_steps=0), kb_train,
                                     kb_dir)  # fmt: skip
            for epochs in (1, 2, 3):
                train = {"epochs": epochs, "patience": epochs, "batch_size": 1024,
                         "lr": 0.003, "seed": seed, "progress": False}  # fmt: skip
                scores, kept = {}, ""
                for name, kb in (("base", None), ("fined", kb_dir)):
                    job = train_model(store, "deepfm", "2:3", test="4:5", settings=sizes,
                                      train=train, kb=kb)  # fmt: skip
                    scores[name] = job.metrics["test"]["auc"]
                    if kb is not None:  # what the forward check trained
                        kept = "fined" if job.model.describe().knowledge else "base"
                margin = scores["fined"] - scores["base"]
                missed += margin < BAR
                rows.append({"seed": seed, "kb_epochs": kb_epochs, "epochs": epochs,
                             "base": scores["base"], "fined": scores["fined"],
                             "margin": margin, "trained": kept})  # fmt: skip
                print(f"seed {seed} KB {kb_epochs} epoch(s), {epochs} epoch(s): base "
                      f"{scores['base']:.4f}, fined {scores['fined']:.4f} ({margin:+.4f}) "
                      f"{'met' if margin >= BAR else 'MISSED'}", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_csv(args.out / "job_safety.csv", float_precision=4)
    print(f"{len(rows) - missed} of {len(rows)} cells meet the bar (fined >= base {BAR})")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
