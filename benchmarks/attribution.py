"""Where FINED's gain comes from: its knowledge tokens, its pull towards the KB's predictions
and its distillation from its model of t-1, each alone and together, in both protocols.

    python benchmarks/attribution.py [--logs movielens,synthetic_drift,new_users]
                                     [--protocols warm,paper] [--seeds 1,2,3] [--rows N]
                                     [--out DIR]

Every setting is a ``fined run`` (DeepFM, the given seeds) of these strategies:

- ``warm`` (warm-started, how production models are retrained): ``incremental``, ``kd``,
  ``replay`` (the KB's bytes), ``tokens`` (FINED's tokens alone: no pull, no model of t-1),
  ``pull`` (the pull towards the KB alone: no tokens, no model of t-1), ``tokens+pull``,
  and ``fined`` as shipped (tokens, pull, the model of t-1, its fallback deployed where it
  looks forward better);
- ``paper`` (nothing warm-started, no model of t-1): the base model alone, ``tokens``,
  ``pull`` and ``tokens+pull`` (FINED in the paper's setting).

For each: test AUC mean +- std over seeds, the forward AUC (each model of t-1 on P_t: the
validation figure), and for the FINED variants, per period, how open the tokens are (their
mean norm over the fields', on P_t's held-out rows), how far the KB has earned its place
(``kb_earned``), and per KB slot how well its own click score ranks the clicks of P_t
(AUC on the held-out rows) and how far it has earned its place (``slot_earned``).
Writes ``attribution.csv`` (one row per setting and strategy) and ``slots.csv`` (one row per
setting, FINED variant, period and slot) under ``--out``; each run directory is kept there,
so a second call resumes and reprints.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import DRIFT, MOVIELENS, NEW_USERS  # noqa: E402  (the same logs)

LOGS = {"movielens": MOVIELENS, "synthetic_drift": DRIFT, "new_users": NEW_USERS}
OFF = {"kd_weight": 0, "fallback": None}  # FINED's own model, without the model of t-1
WARM = [
    "incremental",
    "kd",
    "replay",
    {"kind": "fined", "label": "tokens", "kb_distill": 0, **OFF},
    {"kind": "fined", "label": "pull", "adaptor": {"tokens": 0}, **OFF},
    {"kind": "fined", "label": "tokens+pull", **OFF},
    "fined",
]
COLD = {"warm_start": False, "warmup_base": False}  # the paper's: nothing warm-started
PAPER = [
    {"kind": "incremental", "label": "base", "warm_start": False},
    {"kind": "fined", "label": "tokens", "kb_distill": 0, **OFF, **COLD},
    {"kind": "fined", "label": "pull", "adaptor": {"tokens": 0}, **OFF, **COLD},
    {"kind": "fined", "label": "tokens+pull", **OFF, **COLD},
]
PROTOCOLS = {"warm": ("incremental", WARM), "paper": ("base", PAPER)}


def run(name: str, log: dict[str, Any], protocol: str, args: Any) -> Path:
    from fined.config import parse_model
    from fined.protocol.config import RunConfig
    from fined.protocol.runner import Runner

    baseline, strategies = PROTOCOLS[protocol]
    doc = {"name": name, "models": ["deepfm"], "seeds": args.seeds, "baseline": baseline,
           "strategies": strategies, "model_settings": {"deepfm": {"mlp": [256, 128]}},
           **log}  # fmt: skip
    options = doc["data"]["prepare"].get("options")
    if args.rows and options is not None:  # a synthetic log, smaller; its L0 ramp with it
        from fined.knowledge.knowledge_base import KBConfig

        doc["data"] = {"prepare": {**doc["data"]["prepare"],
                                   "options": {**options, "n_rows": args.rows}}}  # fmt: skip
        ramp = KBConfig.model_fields["l0_warmup_steps"].default
        doc["kb"] = {"l0_warmup_steps": ramp * args.rows // options["n_rows"]}
    root = args.out / "runs" / name
    Runner(parse_model(RunConfig, doc, name), root).run()
    return root


def knowledge_rows(root: Path, name: str) -> list[dict[str, Any]]:
    """Per FINED variant, seed, period and slot: what its own chain's model made of the KB
    (its records, fallback or not)."""
    rows = []
    for path in sorted((root / "cells").glob("*/deepfm/seed*/t*/record.json")):
        record = json.loads(path.read_text())
        use = record.get("knowledge")
        if not use:
            continue
        for k, (slot_auc, earned) in enumerate(
            zip(use["slot_auc"], use["slot_earned"], strict=True)
        ):
            rows.append({"setting": name, "strategy": record["strategy"],
                         "seed": record["seed"], "period": record["period"], "slot": k,
                         "slot_auc": slot_auc, "slot_earned": earned,
                         "kb_earned": use["kb_earned"],
                         "token_share": use["token_share"]})  # fmt: skip
    return rows


def summarize(name: str, root: Path) -> list[dict[str, Any]]:
    import polars as pl

    results = pl.read_csv(root / "results.csv")
    summary = pl.read_csv(root / "summary.csv")
    rows = []
    for strategy in results["strategy"].unique(maintain_order=True).to_list():
        part = results.filter(pl.col("strategy") == strategy)
        per_seed = part.group_by("seed").agg(pl.col("auc").mean(), pl.col("candidate_auc").mean())
        aucs, own = per_seed["auc"].to_list(), per_seed["candidate_auc"].to_list()
        forward = summary.filter(pl.col("strategy") == strategy)["forward_auc_mean"].to_list()
        rows.append({"setting": name, "strategy": strategy, "auc_mean": statistics.fmean(aucs),
                     "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                     "own_mean": statistics.fmean(own),
                     "forward_auc": forward[0] if forward else float("nan")})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default="movielens,synthetic_drift,new_users")
    parser.add_argument("--protocols", default="warm,paper")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", type=int, default=0, help="the synthetic logs' rows (0: theirs)")
    parser.add_argument("--out", type=Path, default=Path("runs/attribution"))
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    import polars as pl

    table: list[dict[str, Any]] = []
    slots: list[dict[str, Any]] = []
    for protocol in args.protocols.split(","):
        for log in args.logs.split(","):
            name = f"{log}_{protocol}"
            started = time.perf_counter()
            root = run(name, LOGS[log], protocol, args)
            rows = summarize(name, root)
            knowledge = knowledge_rows(root, name)
            table += rows
            slots += knowledge
            base = rows[0]["auc_mean"]
            print(f"\n{name} ({time.perf_counter() - started:.0f} s): test AUC, mean +- std "
                  f"over seeds {args.seeds}; forward AUC; minus {rows[0]['strategy']}")  # fmt: skip
            for row in rows:
                print(f"  {row['strategy']:12s} {row['auc_mean']:.4f} +- {row['auc_std']:.4f}"
                      f"  forward {row['forward_auc']:.4f}  {row['auc_mean'] - base:+.4f}"
                      + (f"  (own model {row['own_mean']:.4f})"
                         if row["own_mean"] != row["auc_mean"] else ""))  # fmt: skip
            if knowledge:
                frame = pl.DataFrame(knowledge)
                per = frame.group_by("strategy", "period").agg(
                    pl.col("token_share").mean(), pl.col("kb_earned").mean(),
                    pl.col("slot_earned").mean().alias("slots_earned"),
                ).sort("strategy", "period")  # fmt: skip
                print("  per period, mean over seeds: token share | kb_earned | mean slot_earned")
                for r in per.iter_rows(named=True):
                    print(f"    {r['strategy']:12s} {r['period']:>12s}  {r['token_share']:.3f}"
                          f" | {r['kb_earned']:.2f} | {r['slots_earned']:.2f}")  # fmt: skip
                shipped = frame.filter(pl.col("strategy") == frame["strategy"][-1])
                grid = (
                    shipped.group_by("period", "slot")
                    .agg(pl.col("slot_auc").mean(), pl.col("slot_earned").mean())
                    .sort("slot", "period")
                )
                periods = sorted(set(grid["period"].to_list()))
                print(f"  per slot ({shipped['strategy'][0]}): AUC of its own score on P_t's "
                      "held-out rows / slot_earned, by period")  # fmt: skip
                for k in sorted(set(grid["slot"].to_list())):
                    cells = grid.filter(pl.col("slot") == k)
                    line = "  ".join(
                        f"{a:.3f}/{e:.2f}"
                        for a, e in zip(cells["slot_auc"], cells["slot_earned"], strict=True)
                    )
                    print(f"    slot {k:2d}: {line}")  # fmt: skip
                print(f"    periods: {', '.join(periods)}")
    args.out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(table).write_csv(args.out / "attribution.csv", float_precision=4)
    if slots:
        pl.DataFrame(slots).write_csv(args.out / "slots.csv", float_precision=4)
    print(f"\nwrote {args.out}/attribution.csv and slots.csv")


if __name__ == "__main__":
    main()
