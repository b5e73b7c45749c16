"""Nothing silent, round 3 (issue 29): what `fined` reads and writes cannot be impersonated,
edited or replaced behind its back. A chain the run adds cannot be named by a user's label;
`predict` replaces only a file it wrote; every hand-edited artefact is checked before use;
a search goes on past a trial that diverges; a test period too small to rank is refused
before anything is trained. Each test failed on the code before this round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from fined.config import parse_model
from fined.errors import FinedError
from fined.protocol.config import RunConfig
from fined.train.metrics import MIN_CLASS_ROWS
from test_reliability import (  # noqa: F401  (small, trained, kb_dir: fixtures, asked for with
    DAY0,  # request.getfixturevalue: a parameter of that name would redefine the import)
    kb_dir,
    log_rows,
    one_error,
    run,
    small,
    table_job,
    trained,
    write_config,
)


def _config(strategies: list, baseline: str = "incremental") -> RunConfig:
    doc = {"name": "x", "data": {"prepared": "data"}, "kb_periods": 1, "models": ["deepfm"],
           "strategies": strategies, "baseline": baseline}  # fmt: skip
    return parse_model(RunConfig, doc, "run.yaml")


# -- 1. a chain the run adds cannot be named by a user's label --------------------------------
@pytest.mark.parametrize("kd_first", [True, False])
def test_a_user_label_cannot_stand_in_for_a_fallback_chain(kd_first) -> None:
    """`{kind: kd, label: fined.replay}` took the label of FINED's hidden replay chain: no
    replay chain was trained, and FINED "deployed replay" with kd's models (or, listed the
    other way round, kd's row reported replay's AUCs)."""
    kd = {"kind": "kd", "label": "fined.replay"}
    fined = {"kind": "fined", "fallback": "replay"}
    config = _config(["incremental", *([kd, fined] if kd_first else [fined, kd])])
    chains = {spec.label: spec.kind for spec in config.chains()}
    assert len(chains) == len(config.chains()) == 4  # each chain trained under its own name
    assert chains["fined.replay"] == "kd"
    fallback = config.fallback_of(next(s for s in config.strategies if s.kind == "fined"))
    assert fallback is not None and fallback.kind == "replay"
    assert chains[fallback.label] == "replay"
    assert fallback.label not in {s.label for s in config.strategies}


def test_a_fallback_that_is_its_own_strategy_is_refused() -> None:
    """`{kind: incremental, fallback: incremental}` trained a copy of itself and "won by
    +0.0000"; a fallback of another kind, or of other settings, is still a fallback."""
    with pytest.raises(
        FinedError, match="strategies.0.fallback: 'incremental' is the strategy itself"
    ):
        _config([{"kind": "incremental", "fallback": "incremental"}])
    with pytest.raises(FinedError, match="strategies.1.fallback: .kd. is the strategy itself"):
        _config(["incremental", {"kind": "kd", "label": "kd2", "fallback": "kd"}])
    _config(["incremental", {"kind": "kd", "kd_weight": 2.0, "fallback": "kd"}])
    _config(["incremental", {"kind": "fined", "fallback": "incremental"}])


# -- 2. `predict --out` replaces only a file it wrote ------------------------------------------
def test_predict_replaces_only_a_file_it_wrote(request, tmp_path, capsys) -> None:
    """Inside any fined output, `--out` replaced a user's notes, a run's results.csv or a
    tune's trials.csv without --overwrite; outside them, a second predict to the same file
    needed --overwrite although the first had written it."""
    data, model = request.getfixturevalue("small"), request.getfixturevalue("trained")
    output = tmp_path / "output"
    shutil.copytree(model, output)  # a fined output (it holds fined's marker)
    predict = ["predict", "--run", model, "--data", data, "--periods", "2"]
    for name, text in (("notes.csv", "my notes\n"), ("results.csv", "strategy,auc\nkd,0.7\n")):
        (output / name).write_text(text)
        code, _, err = run(capsys, *predict, "--out", output / name)
        one_error(code, err, f"{output / name}: exists", "--overwrite")
        assert (output / name).read_text() == text
    scores = tmp_path / "scores.csv"
    for _ in range(2):  # the second time replaces what the first wrote
        assert run(capsys, *predict, "--out", scores)[0] == 0
    assert run(capsys, *predict, "--out", output / "scores.csv")[0] == 0
    scores.write_text(scores.read_text() + "0,0,0,0\n")  # changed since: no longer ours alone
    one_error(*run(capsys, *predict, "--out", scores)[::2], "--overwrite")
    assert run(capsys, *predict, "--out", scores, "--overwrite")[0] == 0
    assert run(capsys, *predict, "--out", output / "notes.csv", "--overwrite")[0] == 0


# -- 3. every hand-edited artefact is checked before use --------------------------------------
def _edited(source: Path, to: Path, name: str, edit) -> Path:
    """A copy of the artefact directory ``source`` with its description ``name`` edited."""
    shutil.copytree(source, to)
    doc = json.loads((to / name).read_text())
    edit(doc)
    (to / name).write_text(json.dumps(doc))
    return to


def test_a_model_naming_a_period_the_data_lacks_is_one_line(request, tmp_path, capsys) -> None:
    """`train_periods: [0, 9]` on data of four periods: an IndexError traceback in `fined
    predict` and `fined export`."""
    data, model = request.getfixturevalue("small"), request.getfixturevalue("trained")
    edited = _edited(model, tmp_path / "edited", "model.json",
                     lambda doc: doc.update(train_periods=[0, 9]))  # fmt: skip
    predict = ["predict", "--run", edited, "--data", data, "--periods", "2"]
    code, _, err = run(capsys, *predict, "--out", tmp_path / "scores.csv")
    one_error(code, err, "model.json", "train_periods names period 9", "periods 0..3")
    export = ["export", "--run", edited, "--data", data, "--out", tmp_path / "model.pt"]
    one_error(*run(capsys, *export)[::2], "model.json", "train_periods names period 9")
    assert not (tmp_path / "scores.csv").exists() and not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda doc: doc.pop("train_periods"), "train_periods removed"),
        (lambda doc: doc.update(train_periods=[1]), "train_periods changed"),
        (lambda doc: doc.update(best_epoch=7), "best_epoch changed"),
    ],
)
def test_a_description_edited_after_its_weights_is_refused(
    request, tmp_path, capsys, edit, said
) -> None:
    """Without `train_periods` (or with it edited) a model silently took other ids as
    out-of-vocabulary (187 of 2,000 scores moved): no digest covered the description."""
    data, model = request.getfixturevalue("small"), request.getfixturevalue("trained")
    edited = _edited(model, tmp_path / "edited", "model.json", edit)
    predict = ["predict", "--run", edited, "--data", data, "--periods", "2"]
    code, _, err = run(capsys, *predict, "--out", tmp_path / "scores.csv")
    one_error(code, err, f"{edited / 'model.json'}: edited since it was written", said)
    assert not (tmp_path / "scores.csv").exists()


def test_sizes_and_periods_edited_in_kb_json_are_named(request, tmp_path, capsys) -> None:
    """`slots: 10**12` in kb.json: an out-of-memory line naming neither the file nor the key
    (and `dim: 10**9` a traceback); `periods` edited: used as written."""
    data, kb = request.getfixturevalue("small"), request.getfixturevalue("kb_dir")
    train = ["train", "--data", data, "--model", "deepfm", "--train-periods", "1:2"]
    cases = [
        (lambda doc: doc["config"].update(slots=10**12), "config.slots = 1000000000000 makes"),
        (lambda doc: doc["config"].update(dim=10**9), "config.dim = 1000000000 makes"),
        (lambda doc: doc.update(periods=[0, 1]), "edited since it was written"),
    ]
    for i, (edit, said) in enumerate(cases):
        edited = _edited(kb, tmp_path / f"kb{i}", "kb.json", edit)
        code, _, err = run(capsys, *train, "--kb", edited, "--out", tmp_path / "stage2")
        one_error(code, err, f"{edited / 'kb.json'}: ", said)
        assert not (tmp_path / "stage2").exists()


# -- 4. a search goes on past a trial that diverges; its inputs are checked up front ----------
def _tune_train(data: Path, space: Path, out: Path, *extra) -> list:
    return ["tune", "train", "--data", data, "--model", "deepfm", "--train-periods", "0:1",
            "--space", space, "--out", out, "--sampler", "grid", "--set", "embedding_dim=8",
            "--set", "mlp=[16]", "--set", "train.epochs=2", "--set", "train.batch_size=256",
            *extra]  # fmt: skip


def test_a_diverging_trial_is_a_result_and_the_search_goes_on(request, tmp_path, capsys) -> None:
    """`train.lr: [1.0e+12, 1.0e-3]`: trial 0 diverged and ended the search (exit 2), every
    rerun repeated it, and a corrected space was refused as another search."""
    data = request.getfixturevalue("small")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.lr": [1.0e12, 1.0e-3]}))
    out = tmp_path / "search"
    for _ in range(2):  # the rerun finds both trials done: the failure is a result
        code, stdout, err = run(capsys, *_tune_train(data, space, out))
        assert code == 0, err
        assert "training diverged" in stdout and "failed" in stdout
    table = pl.read_csv(out / "trials.csv")
    assert table["state"].to_list() == ["failed", "complete"]
    assert table["error"][0].startswith("training diverged") and table["valid_auc"][0] is None
    assert table["valid_auc"][1] > 0.5
    assert json.loads((out / "best.json").read_text())["trial"] == 1
    assert json.loads((out / "trials" / "000.json").read_text())["error"].startswith("training")

    everything = tmp_path / "space2.yaml"  # every trial fails: said in one line, after them all
    everything.write_text(yaml.safe_dump({"train.lr": [1.0e12, 1.0e13]}))
    code, _, err = run(capsys, *_tune_train(data, everything, tmp_path / "all"))
    one_error(code, err, "every trial failed (2)", "trial 0 (train.lr=1e+12)", "diverged")
    assert pl.read_csv(tmp_path / "all" / "trials.csv")["state"].to_list() == ["failed"] * 2


def test_scores_that_are_not_finite_are_a_divergence(request, tmp_path, capsys) -> None:
    """Weights still finite but too large to compute with (lr 1e12, one step an epoch): the
    validation scores were NaN and scikit-learn's ValueError ended in a traceback."""
    data = request.getfixturevalue("small")
    out = tmp_path / "run"
    args = ["train", "--data", data, "--model", "deepfm", "--train-periods", "0:1", "--out",
            out, "--set", "embedding_dim=8", "--set", "train.lr=1e12"]  # fmt: skip
    code, _, err = run(capsys, *args)
    one_error(code, err, "training diverged: the model's scores were not finite", "train.lr")
    assert not (out / "model.safetensors").exists()


def test_a_search_checks_its_inputs_before_it_claims_out(request, tmp_path, capsys) -> None:
    """A one-step run config, and a KB whose weights were tampered with, were refused only
    after trial 0 had started and --out had been claimed."""
    data, kb = request.getfixturevalue("small"), request.getfixturevalue("kb_dir")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.lr": [1.0e-3, 3.0e-3]}))
    config = write_config(tmp_path / "run.yaml", data, ["incremental"], kb_periods=2)
    out = tmp_path / "search"
    tune = ["tune", "run", config, "--strategy", "incremental", "--space", space, "--out", out]
    one_error(*run(capsys, *tune)[::2], str(config), "one step", "at least two steps")
    assert not out.exists()

    tampered = tmp_path / "kb"
    shutil.copytree(kb, tampered)
    weights = tampered / "kb.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0x01
    weights.write_bytes(bytes(raw))
    code, _, err = run(capsys, *_tune_train(data, space, out, "--kb", tampered))
    one_error(code, err, "kb.safetensors", "does not match the sha256")
    assert not out.exists()


# -- 5. a test period too small to rank is refused before anything is trained ------------------
def test_a_test_period_too_small_to_rank_is_refused_up_front(tmp_path, capsys) -> None:
    """A last period of 2 rows gave a test AUC of 0.0000, averaged into the run's figures
    without a word."""
    csv = tmp_path / "log.csv"
    rows = log_rows(300, step=864) + log_rows(2, start=DAY0 + 3 * 86_400 + 60)
    csv.write_text("clk,ts,user,ad\n" + rows)  # three days of 100 rows, then 2 on a fourth
    data = tmp_path / "data"
    assert run(capsys, "data", "prepare", table_job(tmp_path, csv), "--out", data)[0] == 0
    config = write_config(tmp_path / "run.yaml", data, ["incremental"])
    out = tmp_path / "out"
    code, _, err = run(capsys, "run", config, "--out", out)
    one_error(code, err, "period 2024-01-04: its rows are 2 rows, 1 of them clicks",
              f"fewer than {MIN_CLASS_ROWS} of each class", "last_period")  # fmt: skip
    assert not (out / "config.json").exists() and not (out / "warmup").exists()
    config = write_config(tmp_path / "run.yaml", data, ["incremental"], last_period=2)
    assert run(capsys, "run", config, "--out", out)[0] == 0  # ended before it: runs


# -- 6. what a message says is what happened -------------------------------------------------
def test_a_config_device_is_named_as_the_config_key(request, tmp_path, capsys) -> None:
    """`device: cuda` in a config was refused as `--device cuda`; `train.cuda_graphs: true`
    was ignored by `fined run` on a CPU without a word (`fined train` says so)."""
    import torch

    data = request.getfixturevalue("small")
    if not torch.cuda.is_available():
        config = write_config(tmp_path / "cuda.yaml", data, ["incremental"], device="cuda")
        code, _, err = run(capsys, "run", config, "--out", tmp_path / "cuda")
        one_error(code, err, f"{config}: device: cuda: CUDA is not available")
        assert "--device" not in err and not (tmp_path / "cuda").exists()
    train = {"batch_size": 256, "epochs": 1, "patience": 1, "cuda_graphs": True}
    config = write_config(tmp_path / "run.yaml", data, ["incremental"], train=train)
    code, _, err = run(capsys, "run", config, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert (
        "warning: train.cuda_graphs: eager steps (CUDA graphs need a CUDA device, not cpu)" in err
    )


def test_the_l0_ramp_message_says_why_its_steps_are_too_many() -> None:
    """ "ramps up over 5 steps (2 epochs of 3 steps) but training stops after 2 epochs" read
    as if 6 steps were fewer than 5: the epoch after the ramp it needs was not said."""
    from fined.knowledge.knowledge_base import KBConfig
    from fined.train.config import KBTrainConfig
    from fined.train.kb_builder import check_l0_ramp

    with pytest.raises(FinedError) as caught:
        check_l0_ramp(KBConfig(l0_warmup_steps=5), KBTrainConfig(epochs=2, batch_size=10), 30)
    said = str(caught.value)
    assert "selected from an epoch after the ramp" in said
    assert "raise train.epochs to 3 or more, or lower l0_warmup_steps to 3 or less" in said
    assert check_l0_ramp(KBConfig(l0_warmup_steps=3), KBTrainConfig(epochs=2, batch_size=10), 30)


def test_tune_run_says_trials_are_judged_forward() -> None:
    """`fined tune run --help` said trials were judged by held-out AUC; the code judges them
    by forward AUC."""
    import typer

    from fined.cli import app

    tune = typer.main.get_command(app).commands["tune"].commands["run"]  # type: ignore[attr-defined]
    assert "forward AUC" in tune.help and "held-out AUC" not in tune.help
