"""`fined data prepare/describe`: the happy path, and one test per class of bad input.

Every bad input ends in exit code 2, one `error:` line naming the problem, no traceback, and
no output directory (not even a temporary one) left behind.
"""

import subprocess
import sys
from pathlib import Path

from fined.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code: int, err: str, match: str, out_dir: Path) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def table_config(tmp_path: Path, csv: Path, **over: str) -> Path:
    cfg = {
        "dataset": "table",
        "options": f"{{path: {csv}, label: clk, time: ts, time_format: '%Y-%m-%d %H:%M:%S'}}",
        "periods": "{by: day}",
        "features": "[{name: user, kind: categorical, source: user}, "
        "{name: ad, kind: categorical, source: item}]",
    }
    cfg.update(over)
    path = tmp_path / "job.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
    return path


GOOD = (
    "clk,ts,user,ad\n"
    "0,2024-01-01 10:00:00,u1,a1\n1,2024-01-01 11:00:00,u2,a2\n0,2024-01-01 12:00:00,u1,a2\n"
    "1,2024-01-02 10:00:00,u3,a1\n0,2024-01-02 11:00:00,u1,a3\n"
)


def test_prepare_and_describe_a_table(tmp_path, capsys) -> None:
    csv = write_csv(tmp_path / "log.csv", GOOD)
    out = tmp_path / "data"
    code, stdout, _ = run(
        capsys, "data", "prepare", str(table_config(tmp_path, csv)), "--out", str(out)
    )
    assert code == 0 and "2 periods, 5 rows" in stdout
    code, stdout, _ = run(capsys, "data", "describe", str(out))
    assert code == 0
    assert "2024-01-01" in stdout and "2024-01-02" in stdout and "0.333" in stdout
    assert "new" in stdout and "user" in stdout


def test_missing_file(tmp_path, capsys) -> None:
    cfg = table_config(tmp_path, tmp_path / "absent.csv")
    code, _, err = run(capsys, "data", "prepare", str(cfg), "--out", str(tmp_path / "o"))
    assert_clean_failure(code, err, "absent.csv", tmp_path / "o")


def test_missing_config_file(tmp_path, capsys) -> None:
    code, _, err = run(
        capsys, "data", "prepare", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")
    )
    assert_clean_failure(code, err, "nope.yaml: no such file", tmp_path / "o")


def test_missing_column(tmp_path, capsys) -> None:
    csv = write_csv(tmp_path / "log.csv", GOOD.replace(",ad\n", ",advert\n", 1))
    code, _, err = run(
        capsys, "data", "prepare", str(table_config(tmp_path, csv)), "--out", str(tmp_path / "o")
    )
    assert_clean_failure(code, err, "'ad'", tmp_path / "o")


def test_non_binary_label(tmp_path, capsys) -> None:
    csv = write_csv(tmp_path / "log.csv", GOOD.replace("\n1,2024-01-02", "\n3,2024-01-02"))
    code, _, err = run(
        capsys, "data", "prepare", str(table_config(tmp_path, csv)), "--out", str(tmp_path / "o")
    )
    assert_clean_failure(code, err, "non-binary value 3", tmp_path / "o")


def test_unparsable_time_stamp(tmp_path, capsys) -> None:
    csv = write_csv(tmp_path / "log.csv", GOOD.replace("2024-01-02 11:00:00", "yesterday"))
    code, _, err = run(
        capsys, "data", "prepare", str(table_config(tmp_path, csv)), "--out", str(tmp_path / "o")
    )
    assert_clean_failure(code, err, "'yesterday'", tmp_path / "o")


def test_empty_period(tmp_path, capsys) -> None:
    csv = write_csv(tmp_path / "log.csv", GOOD.replace("2024-01-02", "2024-01-04"))
    code, _, err = run(
        capsys, "data", "prepare", str(table_config(tmp_path, csv)), "--out", str(tmp_path / "o")
    )
    assert_clean_failure(code, err, "empty period 2024-01-02", tmp_path / "o")


def test_unknown_dataset(tmp_path, capsys) -> None:
    code, _, err = run(capsys, "data", "prepare", "--dataset", "nope", "--out", str(tmp_path / "o"))
    assert_clean_failure(code, err, "unknown dataset 'nope'", tmp_path / "o")


def test_invalid_yaml(tmp_path, capsys) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("dataset: table\noptions: {path: [unclosed\n")
    code, _, err = run(capsys, "data", "prepare", str(cfg), "--out", str(tmp_path / "o"))
    assert_clean_failure(code, err, "invalid YAML", tmp_path / "o")


def test_config_key_errors_name_the_key(tmp_path, capsys) -> None:
    csv = write_csv(tmp_path / "log.csv", GOOD)
    cfg = table_config(tmp_path, csv, periods="{by: fortnight}")
    code, _, err = run(capsys, "data", "prepare", str(cfg), "--out", str(tmp_path / "o"))
    assert_clean_failure(code, err, "periods.by", tmp_path / "o")
    cfg = table_config(tmp_path, csv, features="[{name: user, kind: categorial}]")
    code, _, err = run(capsys, "data", "prepare", str(cfg), "--out", str(tmp_path / "o"))
    assert_clean_failure(code, err, "features.0.kind", tmp_path / "o")


def test_describe_a_directory_that_is_not_a_dataset(tmp_path, capsys) -> None:
    code, _, err = run(capsys, "data", "describe", str(tmp_path))
    assert code == 2 and "feature_map.json" in err


def test_console_script_exit_code(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fined.cli",
            "data",
            "prepare",
            "--dataset",
            "nope",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        proc.returncode == 2 and "unknown dataset" in proc.stderr and "Traceback" not in proc.stderr
    )
