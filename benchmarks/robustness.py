"""FINED against its base model and the cheap remedies, where the past pays and where it does
not: across knowledge-base quality, training budgets and logs (issue 20).

    python benchmarks/robustness.py [--axes logs,kb,budget] [--seeds 1,2,3] [--out DIR]

Every setting is the warm-started protocol (``fined run``: each model of t starts from its
model of t-1) with ``incremental`` (the base model alone), ``kd``, ``replay`` (the KB's bytes)
and ``fined`` as shipped, DeepFM, the given seeds. Axes, each varied from the MovieLens main
job's settings:

- ``logs``: MovieLens-100K by month (the past pays); the synthetic recurring drift
  (``configs/synthetic_drift.yaml``); a synthetic log whose users are 90 % new each period
  (and items half new); a MIND-format news log generated here (users new each day, news
  new each day, clicks driven by the user's history categories), read by the ``mind`` adapter.
- ``kb``: the KB trained 1 epoch, 3 epochs, randomly initialised (never trained), trained on
  its periods with the labels shuffled (planted in the run's KB slot before the run), beside
  the run's own KB (early stopping: the ``logs`` MovieLens setting).
- ``budget``: every model trained exactly 1, 2 or 3 epochs per period (no early stopping),
  beside early stopping (the ``logs`` MovieLens setting).

For each setting: test AUC mean ± std over seeds of FINED as deployed (its fallback, the
base model, chosen each period by the forward record), of FINED's own model alone, and of
the others; the margin over ``incremental`` and whether it meets issue 20's bar (>= -0.001).
Writes ``robustness.csv`` and ``robustness.png`` under ``--out``; each setting's run
directory is kept there, so a second call resumes (and reprints) instead of re-running.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

STRATEGIES = ["incremental", "kd", "replay", "fined"]
MOVIELENS = {
    "data": {"prepare": {"dataset": "movielens100k"}},
    "kb_periods": 3,
    "train": {"batch_size": 1024, "lr": 0.001, "epochs": 30, "patience": 2},
    "adaptor": {"tokens": 2},
}
DRIFT = {
    "data": {"prepare": {"dataset": "synthetic", "options": {
        "n_rows": 160_000, "n_periods": 8, "seed": 0,
        "regimes": [[0, 1, 2, 3], [0, 1, 2, 3], [1, 3], [1, 3], [0, 1, 2, 3], [0, 1, 2, 3],
                    [1, 3], [1, 3]]}}},
    "kb_periods": 2,
    "train": {"batch_size": 1024, "lr": 0.003, "epochs": 10, "patience": 2},
}  # fmt: skip
NEW_USERS = {
    "data": {"prepare": {"dataset": "synthetic", "options": {
        "n_rows": 160_000, "n_periods": 6, "seed": 0,
        "drift": [0.9, 0.5] + [0.05] * 10}}},
    "kb_periods": 2,
    "train": {"batch_size": 1024, "lr": 0.003, "epochs": 10, "patience": 2},
}  # fmt: skip
KB_VARIANTS = {"kb_1_epoch": 1, "kb_3_epochs": 3, "kb_random": 0, "kb_shuffled": -1}


def settings(axes: list[str], mind: Path) -> dict[str, tuple[dict[str, Any], Any]]:
    """name -> (the run config's sections, the KB to plant: None, or epochs / 0 / -1)."""
    out: dict[str, tuple[dict[str, Any], Any]] = {}
    if "logs" in axes:
        out["movielens"] = (MOVIELENS, None)
        out["synthetic_drift"] = (DRIFT, None)
        out["synthetic_new_users"] = (NEW_USERS, None)
        out["mind_generated"] = (
            {
                "data": {"prepare": {"dataset": "mind", "options": {
                    "behaviors": [str(mind / "behaviors.tsv")], "news": [str(mind / "news.tsv")],
                    "max_len": 20}}},
                "kb_periods": 2,
                "train": {"batch_size": 1024, "lr": 0.001, "epochs": 10, "patience": 2},
            },
            None,
        )  # fmt: skip
    if "kb" in axes:
        out.update({name: (MOVIELENS, kind) for name, kind in KB_VARIANTS.items()})
    if "budget" in axes:
        for epochs in (1, 2, 3):
            train = {**MOVIELENS["train"], "epochs": epochs, "patience": epochs}
            out[f"budget_{epochs}_epochs"] = ({**MOVIELENS, "train": train}, None)
    return out


def write_mind(directory: Path, days: int = 6, per_day: int = 4000, seed: int = 0) -> None:
    """A MIND-format log (behaviors.tsv, news.tsv): each day 90 % of the users and half of
    the news are new; a user clicks a shown news item with odds set by its category (a
    lasting taste of the whole audience), its own appeal (which lives as long as the item)
    and how often its category is in the user's history."""
    import numpy as np

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    categories = [f"cat{i}" for i in range(12)]
    taste = {c: float(rng.normal(0, 0.8)) for c in categories}
    appeal: dict[str, float] = {}
    news: dict[str, tuple[str, str]] = {}
    pool: list[str] = []
    users: list[tuple[str, list[str]]] = []
    lines, nid, uid = [], 0, 0
    for day in range(days):
        keep = [n for n in pool if rng.random() < 0.5]
        while len(keep) < 300:
            nid += 1
            name = f"N{nid}"
            cat = categories[int(rng.integers(len(categories)))]
            news[name] = (cat, f"{cat}-sub{int(rng.integers(3))}")
            appeal[name] = float(rng.normal(0, 0.8))
            keep.append(name)
        pool = keep
        users = [u for u in users if rng.random() < 0.1]
        for i in range(per_day):
            if not users or rng.random() < 0.9:
                uid += 1
                history = list(rng.choice(list(news), size=int(rng.integers(1, 15))))
                users.append((f"U{uid}", history))
            user, history = users[int(rng.integers(len(users)))]
            liked = [news[n][0] for n in history]
            shown = rng.choice(pool, size=5, replace=False)
            marks = []
            for n in shown:
                affinity = liked.count(news[n][0]) / len(liked)
                logit = -2.0 + taste[news[n][0]] + appeal[n] + 3.0 * affinity
                p = 1 / (1 + np.exp(-logit))
                marks.append(f"{n}-{int(rng.random() < p)}")
            seconds = int(i * 86_000 / per_day)
            stamp = f"11/{day + 9:02d}/2019 {seconds // 3600 % 12 or 12}:{seconds // 60 % 60:02d}:{seconds % 60:02d} {'AM' if seconds < 43_200 else 'PM'}"  # noqa: E501
            lines.append(f"{day * per_day + i}\t{user}\t{stamp}\t{' '.join(history)}\t"
                         f"{' '.join(marks)}\n")  # fmt: skip
    (directory / "behaviors.tsv").write_text("".join(lines))
    (directory / "news.tsv").write_text(
        "".join(f"{n}\t{c}\t{s}\ttitle\tabstract\turl\t[]\t[]\n" for n, (c, s) in news.items())
    )


def plant_kb(run: Any, seed: int, kind: int) -> None:
    """Put a KB of the wanted quality where the run looks for its own (built or loaded):
    ``kind`` epochs of training; 0: never trained; -1: trained on shuffled labels."""
    import torch

    from fined.artifacts.kb_store import round_through_storage, save_kb
    from fined.knowledge.knowledge_base import KnowledgeBase
    from fined.train.trainer import Trainer

    config = run.config
    spec = next(s for s in config.strategies if s.uses_kb)
    kb_config = config.kb_config(spec)
    directory = run.directory.kb(run.kbs.name(kb_config, seed, run.s - 1))
    if (directory / "kb.json").is_file():
        return
    periods = list(range(run.s))
    last = periods[-1]
    torch.manual_seed(seed)
    kb = KnowledgeBase(run.data.feature_map, kb_config, known_through=last)
    metrics: dict[str, Any] = {"seed": seed, "planted": kind}
    if kind != 0:
        rows = run.data.train(periods, last)
        holdout = run.data.holdout(periods, last)
        if kind < 0:  # the KB's periods with their labels shuffled: a past that misleads
            g = torch.Generator().manual_seed(seed)
            shuffled = rows.label[torch.randperm(len(rows), generator=g)]
            rows = dataclasses.replace(rows, label=shuffled)
        epochs = kind if kind > 0 else config.kb_train.epochs
        train = config.kb_train.model_copy(update={"epochs": epochs, "patience": epochs,
                                                   "seed": seed, "progress": False})  # fmt: skip
        fit = Trainer(kb, train).fit(rows, holdout)
        metrics["valid"] = fit.best
    kb.eval()
    round_through_storage(kb)
    save_kb(directory, kb, periods, metrics)


def run_setting(name: str, sections: dict[str, Any], kb_kind: Any, args: Any) -> Any:
    from fined.config import parse_model
    from fined.protocol.config import RunConfig
    from fined.protocol.runner import Runner

    doc = {"name": name, "models": args.models, "seeds": args.seeds, "strategies": STRATEGIES,
           "model_settings": {m: {"mlp": [256, 128]} for m in args.models}, **sections}  # fmt: skip
    config = parse_model(RunConfig, doc, name)
    root = args.out / "runs" / name
    if kb_kind is not None:
        runner = Runner(config, root)
        with runner.directory.claimed():
            run = runner.open()
            for seed in args.seeds:
                plant_kb(run, seed, kb_kind)
    return Runner(config, root).run()


def summarize(name: str, results: Any) -> list[dict[str, Any]]:
    import polars as pl

    rows = []
    for model in results["model"].unique(maintain_order=True).to_list():
        part = results.filter(pl.col("model") == model)
        per_seed = part.group_by("strategy", "seed").agg(
            pl.col("auc").mean(), pl.col("candidate_auc").mean()
        )
        figures = {}
        for strategy in STRATEGIES:
            values = per_seed.filter(pl.col("strategy") == strategy).sort("seed")
            figures[strategy] = values["auc"].to_list()
            if strategy == "fined":
                figures["fined_alone"] = values["candidate_auc"].to_list()
        fined = part.filter(pl.col("strategy") == "fined")
        row = {"setting": name, "model": model,
               "fined_own_share": float((fined["deployed"] == "fined").mean())}  # fmt: skip
        for key, values in figures.items():
            row[f"{key}_mean"] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["margin"] = row["fined_mean"] - row["incremental_mean"]
        row["margin_alone"] = row["fined_alone_mean"] - row["incremental_mean"]
        row["met"] = row["margin"] >= -0.001
        rows.append(row)
    return rows


def figure(table: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * table.height + 1.5))
    y = list(range(table.height))
    labels = [f"{s} ({m})" for s, m in zip(table["setting"], table["model"], strict=True)]
    ax.errorbar(table["margin"], y, xerr=table["fined_std"], fmt="o", color="C0",
                label="FINED as deployed")  # fmt: skip
    ax.errorbar(table["margin_alone"], [v + 0.2 for v in y], xerr=table["fined_alone_std"],
                fmt="s", color="C1", alpha=0.7, label="FINED's own model alone")  # fmt: skip
    ax.axvline(0, color="grey", lw=1)
    ax.axvline(-0.001, color="red", lw=1, ls="--", label="bar: incremental - 0.001")
    ax.set_yticks(y, labels)
    ax.tick_params(axis="x", labelrotation=30)
    ax.invert_yaxis()
    ax.set_xlabel("test AUC minus incremental's (mean over seeds; bars: std of FINED)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axes", default="logs,kb,budget")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--models", default="deepfm")
    parser.add_argument("--only", default="", help="run only these settings (comma list)")
    parser.add_argument("--out", type=Path, default=Path("runs/robustness"))
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.models = args.models.split(",")
    import polars as pl

    mind = args.out / "mind_log"
    if not (mind / "news.tsv").is_file():
        write_mind(mind)
    plan = settings(args.axes.split(","), mind)
    if args.only:
        plan = {k: v for k, v in plan.items() if k in args.only.split(",")}
    rows = []
    for name, (sections, kb_kind) in plan.items():
        started = time.perf_counter()
        run_setting(name, sections, kb_kind, args)
        results = pl.read_csv(args.out / "runs" / name / "results.csv")
        for row in summarize(name, results):
            rows.append(row)
            print(f"{name:22s} {row['model']:7s} fined {row['fined_mean']:.4f} ± "
                  f"{row['fined_std']:.4f} (own model alone {row['fined_alone_mean']:.4f}, "
                  f"deployed in {row['fined_own_share']:.0%} of cells) | incremental "
                  f"{row['incremental_mean']:.4f} ± {row['incremental_std']:.4f} | kd "
                  f"{row['kd_mean']:.4f} | replay {row['replay_mean']:.4f} | margin "
                  f"{row['margin']:+.4f} {'met' if row['met'] else 'MISSED'} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    table = pl.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.write_csv(args.out / "robustness.csv", float_precision=4)
    figure(table, args.out / "robustness.png")
    missed = table.filter(~pl.col("met"))
    print(f"{table.height - missed.height} of {table.height} settings meet the bar; "
          f"wrote {args.out}/robustness.csv and robustness.png")  # fmt: skip
    if missed.height:  # a measured miss, reported; not a failure of the script
        names = [f"{s} ({m})" for s, m in missed.select("setting", "model").iter_rows()]
        print("missed: " + ", ".join(names))


if __name__ == "__main__":
    main()
