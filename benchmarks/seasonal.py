"""Where memory should pay: patterns that leave for several periods and come back, and a
weekly cycle. FINED against incremental, kd and replay at equal bytes.

    python benchmarks/seasonal.py [--logs seasons,weeks] [--models deepfm,dcn]
                                  [--seeds 1,2,3] [--scale 1.0] [--out DIR]

Two synthetic logs (``fined.data.datasets.synthetic``; four planted patterns, two of them
recurring, the other two always on):

- ``seasons``: 16 daily periods of 10,000 rows; the recurring patterns are on in periods
  0-3 (the KB's and the warm-up's, far back by the end), off in 4-7, on in 8-11, off in
  12-15: two returns after four periods away, each tested on the day it happens.
- ``weeks``: four weeks of daily periods (28 x 6,000 rows) with a ``weekday`` field; the
  recurring patterns are on at weekends only; KB and warm-up on the first week. Every
  Saturday is a return, every Monday a departure.

Each log is a ``fined run`` (the warm-started protocol) of ``incremental``, ``kd``,
``replay`` (a reservoir of the KB's bytes) and ``fined`` as shipped, embedding 16, MLP
[128, 64]. Prints test AUC mean +- std over seeds and FINED's margin over replay and its
standard deviation (the target: FINED >= replay + one seed std), and writes, per log,
``seasonal_<log>.png`` (test AUC per period, mean over seeds, periods where the recurring
patterns are on shaded) and ``seasonal.csv`` under ``--out``; run directories are kept
there, so a second call resumes and reprints.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

STRATEGIES = ["incremental", "kd", "replay", "fined"]
ALL, STEADY = [0, 1, 2, 3], [1, 3]
SEASONS = [ALL] * 4 + [STEADY] * 4 + [ALL] * 4 + [STEADY] * 4
WEEKS = [ALL if day % 7 in (5, 6) else STEADY for day in range(28)]  # 2024-01-01: a Monday
LOGS: dict[str, dict[str, Any]] = {
    "seasons": {"options": {"n_rows": 160_000, "n_periods": 16, "regimes": SEASONS},
                "kb_periods": 4},
    "weeks": {"options": {"n_rows": 168_000, "n_periods": 28, "regimes": WEEKS,
                          "weekday": True}, "kb_periods": 7},
}  # fmt: skip


def run(log: str, args: Any) -> Path:
    from fined.config import parse_model
    from fined.protocol.config import RunConfig
    from fined.protocol.runner import Runner

    spec = LOGS[log]
    sizes = {"embedding_dim": 16, "mlp": [128, 64]}
    doc = {
        "name": f"seasonal_{log}",
        "data": {
            "prepare": {
                "dataset": "synthetic",
                "options": {
                    "seed": 0,
                    **spec["options"],
                    "n_rows": int(spec["options"]["n_rows"] * args.scale),
                },
            }
        },
        "kb_periods": spec["kb_periods"],
        "models": args.models,
        "model_settings": {m: sizes for m in args.models},
        "seeds": args.seeds,
        "strategies": STRATEGIES,
        "train": {"batch_size": 1024, "lr": 0.003, "epochs": 10, "patience": 2},
    }
    if args.scale != 1.0:  # the L0 ramp shrinks with the rows: it ends as far into the build
        from fined.knowledge.knowledge_base import KBConfig

        ramp = KBConfig.model_fields["l0_warmup_steps"].default
        doc["kb"] = {"l0_warmup_steps": int(ramp * args.scale)}
    root = args.out / "runs" / log
    Runner(parse_model(RunConfig, doc, log), root).run()
    return root


def figure(per_period: Any, on: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = per_period["model"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 3.2 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        part = per_period.filter(per_period["model"] == model)
        periods = sorted(part["test_period"].unique().to_list())
        x = {p: i for i, p in enumerate(periods)}
        for i, p in enumerate(periods):
            if p in on:
                ax.axvspan(i - 0.5, i + 0.5, color="0.9", lw=0)
        for strategy in STRATEGIES:
            rows = part.filter(part["strategy"] == strategy).sort("test_period")
            style = "-" if strategy == "fined" else "--"
            ax.plot([x[p] for p in rows["test_period"]], rows["auc"], style, marker=".",
                    label=strategy)  # fmt: skip
        ax.set_xticks(range(len(periods)), [p[5:] for p in periods], rotation=60, fontsize=7)
        ax.set_ylabel(f"{model}: test AUC")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes[0, 0].set_title(f"{title} (shaded: recurring patterns on in the test period)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default="seasons,weeks")
    parser.add_argument("--models", default="deepfm,dcn")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--scale", type=float, default=1.0, help="a share of each log's rows")
    parser.add_argument("--out", type=Path, default=Path("runs/seasonal"))
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.models = args.models.split(",")
    import polars as pl

    rows: list[dict[str, Any]] = []
    for log in args.logs.split(","):
        root = run(log, args)
        results = pl.read_csv(root / "results.csv")
        regimes = LOGS[log]["options"]["regimes"]
        names = sorted(results["test_period"].unique().to_list())
        first = len(regimes) - len(names)  # the test periods are the last ones
        on = [p for i, p in enumerate(names) if regimes[first + i] == ALL]
        per_period = results.group_by("model", "strategy", "test_period").agg(pl.col("auc").mean())
        args.out.mkdir(parents=True, exist_ok=True)
        figure(per_period, on, args.out / f"seasonal_{log}.png", log)
        print(f"\n{log}: test AUC, mean +- std over seeds {args.seeds}")
        for model in args.models:
            part = results.filter(pl.col("model") == model)
            figures = {}
            for strategy in STRATEGIES:
                mine = part.filter(pl.col("strategy") == strategy)
                per_seed = mine.group_by("seed").agg(pl.col("auc").mean())["auc"].to_list()
                figures[strategy] = per_seed
                std = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
                row = {"log": log, "model": model, "strategy": strategy,
                       "auc_mean": statistics.fmean(per_seed), "auc_std": std}  # fmt: skip
                rows.append(row)
                print(f"  {model:7s} {strategy:12s} {row['auc_mean']:.4f} +- {std:.4f}")
            fined, replay = figures["fined"], figures["replay"]
            margin = statistics.fmean(fined) - statistics.fmean(replay)
            bar = statistics.stdev(replay) if len(replay) > 1 else 0.0
            verdict = "met" if margin >= bar else "MISSED"
            print(f"  {model:7s} fined - replay {margin:+.4f} (bar: replay's std {bar:.4f}): "
                  f"{verdict}")  # fmt: skip
    pl.DataFrame(rows).write_csv(args.out / "seasonal.csv", float_precision=4)
    print(f"\nwrote {args.out}/seasonal.csv and the figures")


if __name__ == "__main__":
    main()
