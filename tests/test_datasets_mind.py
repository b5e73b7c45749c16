"""The MIND adapter on lines written in MIND's exact layout: news shown become rows with
their click, histories share the news vocabulary, missing news are counted, bad lines end in
one error line; and `configs/mind.yaml` runs end to end on a small sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fined.cli import main
from fined.data.loader import PeriodStore

NEWS = (
    'N1\tsports\tfootball\tA "quoted" title\tAn abstract\thttps://x/1\t[]\t[]\n'
    "N2\tnews\tpolitics\tSecond title\t\thttps://x/2\t[]\t[]\n"
    "N3\tsports\ttennis\tThird\tMore\thttps://x/3\t[]\t[]\n"
)
# impression 1: two clicks among three; 2: an empty history; 3: a news missing from news.tsv
BEHAVIORS = (
    "1\tU1\t11/11/2019 9:05:58 AM\tN1 N2\tN1-1 N2-0 N3-1\n"
    "2\tU2\t11/11/2019 11:30:00 PM\t\tN2-0 N3-1\n"
    "3\tU1\t11/12/2019 12:15:00 PM\tN3 N7\tN7-0 N1-1\n"
)


def write_mind(directory: Path, behaviors: str = BEHAVIORS, news: str = NEWS) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "behaviors.tsv").write_text(behaviors)
    (directory / "news.tsv").write_text(news)
    return [
        "-o",
        f"behaviors={directory / 'behaviors.tsv'}",
        "-o",
        f"news={directory / 'news.tsv'}",
    ]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_impressions_become_rows_with_histories_and_categories(tmp_path, capsys) -> None:
    options = write_mind(tmp_path / "mind")
    out = tmp_path / "data"
    code, stdout, err = run(capsys, "data", "prepare", "--dataset", "mind", *options, "--out", out)
    assert code == 0, err
    assert "2 periods, 7 rows" in stdout and "missing from news.tsv (shown): 1" in stdout
    report = json.loads((out / "mind.json").read_text())
    assert report["impressions"] == 3 and report["missing_news_in_histories"] == 1
    store = PeriodStore(out)
    fmap = store.feature_map
    assert [p.name for p in fmap.periods] == ["2019-11-11", "2019-11-12"]
    vocab = json.loads((out / "vocab.json").read_text())
    day1 = store.load([0])
    order = np.argsort(day1.time.numpy(), kind="stable")
    assert day1.label.numpy()[order].tolist() == [1, 0, 1, 0, 1]  # two clicks in impression 1
    news = {i: v for i, v in enumerate(vocab["news_id"]["ids"], start=2)}
    column = [f.name for f in fmap.id_features].index("news_id")
    assert [news[i] for i in day1.ids[:, column].numpy()[order]] == ["N1", "N2", "N3", "N2", "N3"]
    # The history shares the news vocabulary; an empty history is all padding.
    history = day1.sequences["history"].numpy()[order]
    assert [news[i] for i in history[0] if i] == ["N1", "N2"] and not history[3].any()
    # N7 is in no news file: category "missing", in the row and in the history's categories.
    categories = {i: v for i, v in enumerate(vocab["category"]["ids"], start=2)}
    day2 = store.load([1])
    cat = day2.ids[:, [f.name for f in fmap.id_features].index("category")].numpy()
    assert "missing" in {categories[i] for i in cat}
    assert "missing" in {
        categories[i] for i in day2.sequences["history_category"].numpy().ravel() if i
    }
    hour = [f.name for f in fmap.id_features].index("hour")
    hours = json.loads((out / "vocab.json").read_text())["hour"]["ids"]
    assert hours[day1.ids[order[0], hour] - 2] == 9  # 9:05:58 AM


@pytest.mark.parametrize(
    "behaviors, message",
    [
        ("1\tU1\t11/31/2019 9:05:58 AM\tN1\tN1-1\n", "cannot parse '11/31/2019 9:05:58 AM'"),
        ("1\tU1\t11/11/2019 9:05:58 AM\tN1\tN1 N2\n", "has no click label"),
    ],
)
def test_bad_lines_end_in_one_error_line(tmp_path, capsys, behaviors, message) -> None:
    options = write_mind(tmp_path / "mind", behaviors=behaviors)
    out = tmp_path / "data"
    code, _, err = run(capsys, "data", "prepare", "--dataset", "mind", *options, "--out", out)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert message in lines[0] and "behaviors.tsv" in lines[0]
    assert not out.exists()


def test_the_mind_run_config_runs_end_to_end(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    news = "".join(f"N{i}\tcat{i % 4}\tsub{i % 7}\tt\ta\tu\t[]\t[]\n" for i in range(40))
    lines = []
    for i in range(900):  # four days of impressions, clicks on a planted category
        day, user = 11 + i * 4 // 900, rng.integers(30)
        shown = rng.choice(40, 4, replace=False)
        clicks = [int(rng.random() < (0.6 if n % 4 == user % 4 else 0.1)) for n in shown]
        history = " ".join(f"N{n}" for n in rng.choice(40, rng.integers(0, 5)))
        when = f"11/{day}/2019 {1 + i % 12}:{i % 60:02d}:00 {'AM' if i % 2 else 'PM'}"
        impressions = " ".join(f"N{n}-{c}" for n, c in zip(shown, clicks, strict=True))
        lines.append(f"{i}\tU{user}\t{when}\t{history}\t{impressions}\n")
    write_mind(tmp_path / "mind", behaviors="".join(lines), news=news)
    sets = [
        f"data.prepare.options.behaviors=[{tmp_path / 'mind' / 'behaviors.tsv'}]",
        f"data.prepare.options.news=[{tmp_path / 'mind' / 'news.tsv'}]",
        "train.epochs=2", "train.batch_size=256", "kb.slots=4", "kb.l0_warmup_steps=5",
        "kb_train.epochs=2", "kb_train.batch_size=256", "model_settings.deepfm.mlp=[32]",
    ]  # fmt: skip
    config = Path(__file__).resolve().parents[1] / "configs" / "mind.yaml"
    args = ["run", config, "--quick", "--out", tmp_path / "run"]
    code, stdout, err = run(capsys, *args, *[x for s in sets for x in ("--set", s)])
    assert code == 0, err
    assert (tmp_path / "run" / "results.csv").is_file() and "fined" in stdout
