"""`fined run` end to end on small synthetic data: outputs and their consistency, the test
period never driving a choice, and a killed run resuming to the same results."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from conftest import Killed, artefact_writes, flip_labels, write_run_config
from fined.cli import main
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.protocol.data import ProtocolData
from fined.report.tables import backward_transfer
from fined.train.metrics import rela_impr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("drift") / "data"
    options = {"n_rows": 30_000, "n_periods": 5, "seed": 3}
    prepare(PrepareConfig(dataset="synthetic", options=options), out)
    return out


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    config = write_run_config(root / "run.yaml", data_dir, ["incremental", "fined"])
    assert main(["run", str(config), "--out", str(root / "out")]) == 0
    return root / "out"


def test_every_output_is_written_and_consistent(finished, data_dir) -> None:
    for name in ("results.csv", "forgetting.csv", "summary.csv", "report.md", "config.json"):
        assert (finished / name).is_file(), name
    for name in ("test_auc.png", "forgetting_deepfm.png", "kb_patterns.png"):
        assert (finished / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    results = pl.read_csv(finished / "results.csv")
    assert results.height == 2 * 3  # 2 strategies x 1 model x 1 seed x 3 periods
    assert results["t"].to_list() == [1, 2, 3, 1, 2, 3]
    names = [p.name for p in PeriodStore(data_dir).feature_map.periods]
    assert results["test_period"].to_list() == names[2:5] * 2
    assert results["auc"].min() > 0.6  # the planted patterns are learned (measured >= 0.70)
    kept = dict(results.group_by("strategy").agg(pl.col("bytes_kept").max()).iter_rows())
    assert kept["incremental"] == 0 and kept["fined"] > 10_000  # the KB's safetensors size

    forgetting = pl.read_csv(finished / "forgetting.csv")
    summary = pl.read_csv(finished / "summary.csv")
    for strategy in ("incremental", "fined"):
        part = forgetting.filter(pl.col("strategy") == strategy)
        assert part.height == 1 + 2 + 3 + 4  # warm-up row (after 0) then rows after 1, 2, 3
        matrix = {(a, i): v for a, i, v in part.select("after", "period", "auc").iter_rows()}
        # BWT by hand: periods 0..2 between when first learned (0: warm-up row) and the end.
        by_hand = sum(matrix[(3, i)] - matrix[(max(i, 0), i)] for i in range(3)) / 3
        assert backward_transfer(matrix, s=1) == pytest.approx(by_hand)
        row = summary.filter(pl.col("strategy") == strategy).row(0, named=True)
        assert row["bwt_mean"] == pytest.approx(by_hand, abs=1e-6)
        own = results.filter(pl.col("strategy") == strategy)
        assert row["auc_mean"] == pytest.approx(own["auc"].mean(), abs=1e-6)
    aucs = dict(summary.select("strategy", "auc_mean").iter_rows())
    relaimpr = dict(summary.select("strategy", "relaimpr").iter_rows())
    assert relaimpr["incremental"] == pytest.approx(0.0)
    expected = rela_impr(aucs["fined"], aucs["incremental"])
    assert relaimpr["fined"] == pytest.approx(expected, abs=1e-3)
    report = (finished / "report.md").read_text()
    assert "| deepfm | fined |" in report and "figures/forgetting_deepfm.png" in report
    # The forward figure: each model of t-1 on P_t, that is every test but the last.
    for strategy in ("incremental", "fined"):
        own = results.filter((pl.col("strategy") == strategy) & (pl.col("t") < 3))
        row = summary.filter(pl.col("strategy") == strategy).row(0, named=True)
        assert row["forward_auc_mean"] == pytest.approx(own["auc"].mean(), abs=1e-6)


def test_fined_deploys_the_chain_that_looked_forward_better(finished) -> None:
    """FINED's fallback is the run's own ``incremental`` (its cells serve both): each period
    the deployed model is the one whose models of t-1 scored P_t better (at the first
    period, the one better on P_t's held-out tail), recomputed here from the cells."""
    results = pl.read_csv(finished / "results.csv")
    cells = finished / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["fined", "incremental"]
    chains = {}
    for label in ("fined", "incremental"):
        chains[label] = [json.loads((cells / label / "deepfm" / "seed1" / f"t{t}" /
                                     "record.json").read_text()) for t in (1, 2, 3)]  # fmt: skip

    def score(label: str, t: int) -> float:
        own = chains[label]
        figures = [own[u - 2]["auc"] for u in range(2, t + 1)]  # models of u-1 on P_u
        return sum(figures) / len(figures) if figures else own[0]["valid_auc"]

    for t in (1, 2, 3):
        expected = "fined" if score("fined", t) > score("incremental", t) else "incremental"
        row = results.filter((pl.col("strategy") == "fined") & (pl.col("t") == t)).row(
            0, named=True
        )
        assert row["deployed"] == expected
        assert row["auc"] == pytest.approx(chains[expected][t - 1]["auc"], abs=1e-6)
        assert row["candidate_auc"] == pytest.approx(chains["fined"][t - 1]["auc"], abs=1e-6)


def test_test_period_never_drives_a_choice(data_dir, tmp_path) -> None:
    """Flip every label of P3: the cells trained before it (t = 1, 2) choose the same epochs
    and end with byte-identical weights; only the score on P3 changes (to exactly 1 - AUC)."""
    flipped = tmp_path / "flipped-data"
    flip_labels(data_dir, flipped, period=3)
    # FINED as shipped (beside kd, its KB pull spread by the KB's confidence) and with a
    # reservoir and the trust that reads the model of t-1: nothing they fit sees P3.
    strategies = ["incremental", "kd", "fined",
                  {"kind": "fined", "label": "fined-r", "budget_bytes": 1_000_000,
                   "adaptor": {"kb_trust": "disagreement"}}]  # fmt: skip
    runs = {}
    for name, data in (("plain", data_dir), ("flipped", flipped)):
        config = write_run_config(tmp_path / f"{name}.yaml", data, strategies)
        assert main(["run", str(config), "--out", str(tmp_path / name)]) == 0
        runs[name] = tmp_path / name
    for strategy in ("incremental", "kd", "fined", "fined-r"):
        for t in (1, 2):
            cells = [r / "cells" / strategy / "deepfm" / "seed1" / f"t{t}" for r in runs.values()]
            a, b = (yaml.safe_load((c / "record.json").read_text()) for c in cells)
            assert a["best_epoch"] == b["best_epoch"]
            assert a["valid_auc"] == b["valid_auc"]
            assert a["weights_sha256"] == b["weights_sha256"]
            if t == 2:  # tested on P3
                assert b["auc"] == pytest.approx(1 - a["auc"], abs=1e-9)
            else:
                assert a["auc"] == b["auc"]
        if strategy.startswith("fined"):  # the deployed model too (its fallback: incremental)
            deployed = [pl.read_csv(r / "results.csv").filter(
                (pl.col("strategy") == strategy) & (pl.col("t") <= 2))["deployed"].to_list()
                for r in runs.values()]  # fmt: skip
            assert deployed[0] == deployed[1]
        t3 = [
            yaml.safe_load(
                (r / "cells" / strategy / "deepfm" / "seed1" / "t3" / "record.json").read_text()
            )
            for r in runs.values()
        ]
        assert t3[0]["weights_sha256"] != t3[1]["weights_sha256"]  # P3 is trained on at t = 3


def test_a_run_killed_at_any_moment_resumes_to_the_same_results(
    data_dir, finished, tmp_path
) -> None:
    """SIGKILL, start again, until the run finishes by itself: once after its first cell,
    once inside the KB build (after the build's first epoch checkpoint), then at random
    moments. The results equal an uninterrupted run's (timing aside)."""
    config = write_run_config(tmp_path / "run.yaml", data_dir, ["incremental", "fined"])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fined.cli", "run", str(config), "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = out / "cells" / "incremental" / "deepfm" / "seed1" / "t1" / "record.json"

    def kb_epoch_done() -> bool:
        return any((out / "kb").glob("*/checkpoints/last.safetensors"))

    moments = random.Random(7)
    kills, killed_in_kb = 0, False
    for attempt in range(40):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt < 2:  # the first two kills at chosen moments, the rest at random ones
            ready = first.is_file if attempt == 0 else kb_epoch_done
            deadline = time.time() + 300
            while not ready() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):  # later kills come later
                proc.wait(timeout=moments.uniform(attempt, attempt + 4.0))
        if proc.poll() is not None:  # finished (or failed) before the kill
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if attempt == 0:
            assert first.is_file() and not (out / "results.csv").exists()  # killed midway
        if attempt == 1:
            killed_in_kb = kb_epoch_done() and not any((out / "kb").glob("*/kb.json"))
    assert kills >= 3 and killed_in_kb, (kills, killed_in_kb)
    timing = ["train_seconds", "kb_seconds"]
    resumed = pl.read_csv(out / "results.csv").drop(timing)
    reference = pl.read_csv(finished / "results.csv").drop(timing)
    assert resumed.equals(reference)


def test_a_fined_cell_ends_alike_with_its_kb_built_or_found_on_disk(finished, tmp_path) -> None:
    """The run's KB is built inside FINED's first cell; a run that finds it on disk (a restart
    after a kill right after the KB was written, another worker built it) must train the
    same FINED models. It did not: building consumed the random stream, loading did not, and
    the adaptor drew its initial weights after it (test AUC 0.5919 -> 0.5933)."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "cells" / "fined")
    for table in out.glob("*.csv"):
        table.unlink()
    assert any((out / "kb").glob("*/kb.json"))  # the KB is there, and will be loaded
    assert main(["run", str(finished.parent / "run.yaml"), "--out", str(out)]) == 0
    timing = ["train_seconds", "kb_seconds"]
    again = pl.read_csv(out / "results.csv").drop(timing)
    reference = pl.read_csv(finished / "results.csv").drop(timing)
    assert again.equals(reference)


def test_a_run_stopped_right_after_each_artefact_it_writes_resumes_to_the_same_results(
    tmp_path,
) -> None:
    """The issue's tiny run (3,000 rows, 4 periods, incremental + fined), stopped right after
    every file it writes (each epoch's checkpoint and log, the warm-up's model and record,
    the KB's checkpoints and files, each cell's, the tables, figures and report) and started
    again in the same process, one artefact further each time: it stops after exactly the
    writes of an uninterrupted run, in their order, and ends with its models and numbers.
    Every start meets the random streams as the last one left them (a KB found on disk, a
    warm-up read instead of trained, cells skipped). Before the KB kept the streams, a start
    right after the KB was written ended with other FINED numbers."""
    data = tmp_path / "data"
    prepare(PrepareConfig(dataset="synthetic",
                          options={"n_rows": 3_000, "n_periods": 4, "seed": 3}), data)  # fmt: skip
    kb_train = {"batch_size": 128, "epochs": 3, "patience": 1}  # the L0 ramp: 2 of 3 epochs
    config = write_run_config(tmp_path / "run.yaml", data, ["incremental", "fined"],
                              kb_train=kb_train)  # fmt: skip
    reference, out = tmp_path / "reference", tmp_path / "out"
    with artefact_writes(reference) as written:
        assert main(["run", str(config), "--out", str(reference)]) == 0
    with artefact_writes(out, stop=True) as stops:
        for _ in range(len(written) + 1):
            try:
                assert main(["run", str(config), "--out", str(out)]) == 0
                break
            except Killed:
                continue
    assert stops == written, "not stopped after each write of an uninterrupted run, in order"
    assert any(p.startswith("kb/") for p in written) and "report.md" in written
    timing = ["train_seconds", "kb_seconds"]
    for table in ("results.csv", "forgetting.csv"):
        again, once = (pl.read_csv(d / table).drop(timing, strict=False) for d in (out, reference))
        assert again.equals(once), table
    for record in sorted(reference.glob("**/record.json")):  # the weights' digests too
        once, again = ({k: v for k, v in json.loads(path.read_text()).items() if k not in timing}
                       for path in (record, out / record.relative_to(reference)))  # fmt: skip
        assert again == once, record.relative_to(reference)


def test_fined_beside_kd_and_a_reservoir_keeps_its_budget_and_resumes(
    data_dir, finished, tmp_path
) -> None:
    """FINED composed with the remedies it competes with, at two storage budgets: the bytes
    kept are the KB's plus a reservoir filling the rest (int8 storage shrinks the KB), the
    frontier table and figure are written, and a run killed after its first FINED cell
    resumes to the results of an uninterrupted one."""
    kept = pl.read_csv(finished / "results.csv").filter(pl.col("strategy") == "fined")
    kb = int(kept["bytes_kept"].max())  # the default KB's size on this data (fp32)
    small, large = 2 * kb, 4 * kb
    strategies = [
        {"kind": "fined", "label": "fined-s", "budget_bytes": small, "kb": {"storage": "int8"}},
        {"kind": "fined", "label": "fined-l", "budget_bytes": large,
         "adaptor": {"kb_trust": "disagreement"}},
    ]  # fmt: skip
    config = write_run_config(tmp_path / "run.yaml", data_dir, strategies, baseline="fined-s")
    plain, resumed = tmp_path / "plain", tmp_path / "resumed"
    assert main(["run", str(config), "--out", str(plain)]) == 0

    results = pl.read_csv(plain / "results.csv")
    assert results["auc"].min() > 0.6  # the planted patterns are still learned
    most = dict(results.group_by("strategy").agg(pl.col("bytes_kept").max()).iter_rows())
    for label, budget in (("fined-s", small), ("fined-l", large)):
        assert 0.8 * budget < most[label] <= budget, (label, most[label], budget)
    sizes = sorted(p.stat().st_size for p in (plain / "kb").glob("*/kb.safetensors"))
    assert len(sizes) == 2 and sizes[0] < 0.5 * sizes[1]  # the int8 KB, then the fp32 one
    frontier = pl.read_csv(plain / "frontier.csv")
    assert set(frontier["family"]) == {"fined"}
    assert sorted(frontier.filter(pl.col("family") == "fined")["bytes_kept"]) == [
        most["fined-s"], most["fined-l"]]  # fmt: skip
    assert (plain / "figures" / "auc_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"

    cmd = [sys.executable, "-m", "fined.cli", "run", str(config), "--out", str(resumed)]
    first = resumed / "cells" / "fined-s" / "deepfm" / "seed1" / "t1" / "record.json"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()  # still running: killed midway
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["run", str(config), "--out", str(resumed)]) == 0
    timing = ["train_seconds", "kb_seconds"]
    assert pl.read_csv(resumed / "results.csv").drop(timing).equals(results.drop(timing))


def test_reservoir_is_a_stream_sample_within_its_budget(data_dir) -> None:
    data = ProtocolData(PeriodStore(data_dir))
    one = data.reservoir([0], 2, rows=500, seed=1)
    two = data.reservoir([0, 1], 2, rows=500, seed=1)
    assert len(one) == len(two) == 500
    assert two.nbytes == 500 * data.train([0], 2).nbytes // len(data.train([0], 2))

    def keys(b):
        return {tuple(r) for r in torch.cat([b.ids.long(), b.time[:, None]], 1).tolist()}

    p0 = keys(data.train([0], 2))
    # A reservoir after P1 holds, of P0's rows, only rows it already held after P0.
    assert keys(two) & p0 <= keys(one)
    assert 0 < len(keys(two) & p0) < 500  # and it took rows from both periods


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"models": ["nope"]}, "unknown model"),
        ({"strategies": ["incremental", "incremental"]}, "unique"),
        ({"strategies": ["fined"]}, "baseline 'incremental'"),
        ({"strategies": ["incremental", "magic"]}, "strategies.1.kind"),
        ({"kb_periods": 4}, "kb_periods=4"),
        ({"kb": {"slots": 0}}, "kb"),
    ],
)
def test_bad_run_configs_fail_clearly(data_dir, tmp_path, capsys, edit, message) -> None:
    base = {"strategies": ["incremental", "fined"]}
    config = write_run_config(tmp_path / "bad.yaml", data_dir, **{**base, **edit})
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err


def test_streaming_kb_absorbs_each_period_at_a_fixed_size(data_dir, tmp_path) -> None:
    strategies = ["incremental", "fined_streaming", "fined_rebuild", "replay", "full"]
    config = write_run_config(tmp_path / "run.yaml", data_dir, strategies)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    results = pl.read_csv(tmp_path / "out" / "results.csv")

    def kept(strategy: str) -> list[int]:
        return results.filter(pl.col("strategy") == strategy)["bytes_kept"].to_list()

    streaming, rebuild, full = kept("fined_streaming"), kept("fined_rebuild"), kept("full")
    assert len(set(streaming)) == 1  # the streaming KB never grows
    assert rebuild == sorted(rebuild) and rebuild[0] < rebuild[-1]  # keeps the raw past
    assert all(r > s for r, s in zip(rebuild, streaming, strict=True))
    assert full == sorted(full) and full[-1] > full[0]
    assert max(kept("replay")) <= streaming[0]  # the replay budget is the KB's size
    # The KB inside the last streaming model has moved away from the one built on P0.
    from safetensors.torch import load_file

    cell = tmp_path / "out" / "cells" / "fined_streaming" / "deepfm" / "seed1" / "t3"
    absorbed = load_file(str(cell / "model.safetensors"))
    built = load_file(str(next((tmp_path / "out" / "kb").glob("*-seed1")) / "kb.safetensors"))
    moved = [
        k
        for k, v in built.items()
        if v.is_floating_point() and not torch.equal(v, absorbed["kb." + k])
    ]
    assert moved
    assert int(absorbed["kb.id_limits"].max()) > int(built["id_limits"].max())  # knows new ids


def test_parallel_chains_give_the_single_process_results(data_dir, tmp_path, capsys) -> None:
    """``--jobs 2``: two (seed, model) chains in worker processes, sharing a KB (both chains'
    ``fined`` need the one of seed 1: built once, under a lock), give what one process gives
    with the workers' thread count (one each here)."""
    strategies = ["incremental", "fined"]
    config = write_run_config(tmp_path / "run.yaml", data_dir, strategies, models=["deepfm", "dcn"])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(["run", str(config), "--out", str(tmp_path / "one")]) == 0
        torch.set_num_threads(2)  # split between the two workers: one each
        assert main(["run", str(config), "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    timing = ["train_seconds", "kb_seconds"]
    parallel = pl.read_csv(tmp_path / "two" / "results.csv").drop(timing)
    single = pl.read_csv(tmp_path / "one" / "results.csv").drop(timing)
    assert parallel.equals(single)
    assert len(parallel) == 2 * len(strategies) * 3  # models x strategies x trained periods
    built = sorted(p.name for p in (tmp_path / "two" / "kb").iterdir() if p.is_dir())
    assert built == sorted(p.name for p in (tmp_path / "one" / "kb").iterdir() if p.is_dir())
    # A worker's error ends the run with its message, as in one process.
    (tmp_path / "two" / "warmup" / "dcn" / "seed1" / "record.json").write_text("{broken")
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(tmp_path / "two"), "--jobs", "2"]) != 0
    err = capsys.readouterr().err
    assert "not a valid warm-up record" in err and "Traceback" not in err
