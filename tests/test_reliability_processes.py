"""Nothing silent, round 3 (issue 29): processes that end badly. Workers of a parent killed
with kill -9 end with it, and no command claims a directory while one still writes in it; a
Taobao prepare killed midway leaves no spill files for ever; an address-space limit too low
to work in is one line, not a hang. Each test failed on the code before this round."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import fined.outputs
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.errors import FinedError
from fined.outputs import owned_directory
from test_datasets_taobao import generate, write_tables
from test_reliability import SYNTHETIC, cli, one_error, write_config

LINUX = sys.platform.startswith("linux")


def _alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped by its new parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _workers_of(pid: int) -> list[int]:
    """The spawned worker processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def _held(directory: Path) -> bool:
    """Whether processes hold ``directory``'s workers' lock (its workers have started)."""
    import fcntl

    lock = directory / fined.outputs.WORKERS_LOCK
    if not lock.is_file():
        return False
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def _end(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- 1. workers end with their parent ----------------------------------------------------------
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_run_workers_end_when_their_parent_is_killed(tmp_path) -> None:
    """kill -9 of a `fined run --jobs 2` parent left its workers running (parent 1, still
    writing 30-45 s later) while its lock was gone: the same command started again took the
    directory beside them."""
    data = tmp_path / "data"
    prepare(PrepareConfig(dataset="synthetic", options=SYNTHETIC), data)
    slow = {"batch_size": 32, "lr": 0.001, "epochs": 50, "patience": 50}  # minutes of work
    config = write_config(tmp_path / "run.yaml", data, ["incremental"], seeds=[1, 2], train=slow)
    out = tmp_path / "out"
    parent = subprocess.Popen(
        [sys.executable, "-m", "fined.cli", "run", str(config), "--out", str(out), "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers: list[int] = []
    try:
        started = [out / "warmup" / "deepfm" / f"seed{s}" for s in (1, 2)]  # (older code)
        working = lambda: _held(out) or all(p.is_dir() for p in started)  # noqa: E731
        assert _wait(lambda: working() and len(_workers_of(parent.pid)) == 2, 300)
        workers = _workers_of(parent.pid)
        parent.kill()
        parent.wait()
        assert _wait(lambda: not any(_alive(w) for w in workers), 30), "workers outlived it"
        with owned_directory(out, "run"):  # the directory is free again, at once
            pass
    finally:
        parent.kill()
        _end(workers)


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_pool_workers_end_when_their_parent_is_killed(tmp_path) -> None:
    """The pool `fined tune --jobs` runs its trials in: a parent killed with kill -9 took
    none of them with it."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(f"""
        import time
        from pathlib import Path
        from fined.workers import worker_pool

        if __name__ == "__main__":
            with worker_pool(2, Path({str(tmp_path)!r})) as pool:
                jobs = [pool.submit(time.sleep, 600) for _ in range(2)]
                print("working", flush=True)
                time.sleep(600)
    """)
    )
    parent = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "working"
        assert _wait(lambda: len(_workers_of(parent.pid)) == 2, 120)
        workers = _workers_of(parent.pid)
        parent.kill()
        parent.wait()
        assert _wait(lambda: not any(_alive(w) for w in workers), 30), "workers outlived it"
    finally:
        parent.kill()
        _end(workers)


def test_no_command_claims_a_directory_a_live_worker_holds(tmp_path, monkeypatch) -> None:
    """A worker that has not ended yet (its parent killed a moment ago) holds the directory:
    a new claim waits for it, and refuses in one line if it does not end."""
    out = tmp_path / "out"
    with owned_directory(out, "run"):
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fined.outputs import hold_as_worker; "
         f"hold_as_worker({str(out)!r}); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(fined.outputs, "WORKERS_GONE_WITHIN", 1.0)
        refused = pytest.raises(FinedError, match="worker processes of an earlier fined command")
        with refused, owned_directory(out, "run"):
            pass
        monkeypatch.setattr(fined.outputs, "WORKERS_GONE_WITHIN", 60.0)
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
        with owned_directory(out, "run"):  # waited for it to end, then claimed
            assert holder.poll() is not None
        killer.wait()
    finally:
        holder.kill()
        holder.wait()


# -- 2. a killed Taobao prepare leaves no spill files for ever -----------------------------------
def test_a_killed_taobao_prepare_leaves_no_spill_directory(tmp_path) -> None:
    """Each kill left its bucket files (gigabytes on the real log) in the temp directory, and
    no later prepare removed them."""
    raw = write_tables(tmp_path / "raw", generate(seed=5, n_samples=20_000, n_events=60_000))
    work = tmp_path / "work"
    work.mkdir()
    job = tmp_path / "job.yaml"
    options = {"path": str(raw), "n_buckets": 8, "max_len": 5, "work_dir": str(work),
               "block_mb": 0.05}  # fmt: skip
    job.write_text(yaml.safe_dump({"dataset": "taobao_ad_raw", "options": options,
                                   "chunk_rows": 256}))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "fined.cli", "data", "prepare", str(job), "--out",
         str(tmp_path / "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert _wait(lambda: any(work.iterdir()) or proc.poll() is not None, 300)
        assert proc.poll() is None, "the prepare ended before it could be killed"
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
    left = list(work.iterdir())
    assert len(left) == 1  # what the kill left
    small = write_tables(tmp_path / "small", generate(seed=6, n_samples=50, n_events=100))
    config = {**options, "path": str(small)}
    prepare(PrepareConfig(dataset="taobao_ad_raw", options=config), tmp_path / "again")
    assert list(work.iterdir()) == []  # the next prepare removed it, and its own


# -- 3. an address space too small to work in ------------------------------------------------
def _address_space(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS as Linux counts it")
def test_an_address_space_limit_below_the_floor_is_one_line(tmp_path) -> None:
    """`ulimit -v` of 3.5 GiB with 32 polars threads and RUST_BACKTRACE set: polars' pool
    failed to start inside its own code at the run's first evaluation and the command hung
    (still running after 300 s), or ended in a PanicException traceback, or finished, by
    where its allocations landed; now it is refused at once, in one line."""
    from fined.limits import MIN_ADDRESS_SPACE

    data = tmp_path / "data"
    prepare(PrepareConfig(dataset="synthetic", options=SYNTHETIC), data)
    config = write_config(tmp_path / "run.yaml", data, ["incremental"])
    out = tmp_path / "out"
    code, _, err = cli("run", config, "--out", out, preexec=_address_space(7 << 29),
                       env={"POLARS_MAX_THREADS": "32", "RUST_BACKTRACE": "1"},
                       timeout=240)  # fmt: skip
    one_error(code, err, "limited to 3.5 GiB (ulimit -v)", f"{MIN_ADDRESS_SPACE >> 30} GiB")
    assert not out.exists()
