"""Output directories: which are ours, and how we claim, lock, restart and replace them.

One rule for every command that writes a directory (``data prepare``, ``train``, ``kb build``,
``run``): a directory is ours only if it holds our marker, ``.fined-output.json`` (the command
that made it, fined's version, an id). A directory that exists, is not empty and has no
marker is refused, never written into; one made by another command is refused too.
``--restart`` deletes only the entries its command writes, never what a user put beside them.

A directory is locked while a command works in it (an OS file lock, which the kernel releases
when the process ends, kill -9 included): a second process on it fails at once, naming the
holder. Its worker processes hold a second, shared lock of their own (``hold_as_worker``),
so that no command claims the directory while a worker of an ended one still writes in it.
A single file a command writes is replaced later only if the record beside it
(``record_written``) shows that fined wrote it and nobody changed it since. A prepared
dataset is replaced whole by a swap that leaves the old copy recoverable at every instant:
if a process dies between the swap's two renames, the next one to look puts the old copy
back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fined import __version__
from fined.errors import FinedError
from fined.io import (
    CAN_LOCK,
    atomic_write_json,
    describe_os_error,
    make_temporary_dir,
    process_alive,
    read_json,
    remove_stale,
    temporary_name,
)

MARKER = ".fined-output.json"
LOCK = ".fined.lock"
# Held (shared) by every worker process of the command that holds LOCK, for its whole life:
# a command claiming the directory waits until no worker of an earlier one is left.
WORKERS_LOCK = ".fined.workers.lock"
_OWN_FILES = {MARKER, LOCK, WORKERS_LOCK}
WORKERS_GONE_WITHIN = 15.0  # seconds a claim waits for an ended command's workers to end
_HELD: list[int] = []  # the workers' locks this process holds until it ends


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of directory ``path``, or None when it has none."""
    file = path / MARKER
    if not file.exists():
        return None
    doc = read_json(file, "fined output marker")
    if not isinstance(doc, dict) or not isinstance(doc.get("command"), str):
        raise FinedError(f"{file}: not a valid fined output marker")
    return doc


def _entries(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as err:
        raise FinedError(f"{path}: {describe_os_error(err)}") from None


def check_claimable(path: Path, command: str) -> dict[str, Any] | None:
    """The marker of ``path`` when it is ``command``'s output, None when ``path`` does not
    exist or is empty; anything else is refused with the reason."""
    if not path.exists():
        if path.is_symlink():
            raise FinedError(f"{path}: a symbolic link to nothing; not writing through it")
        return None
    if not path.is_dir():
        raise FinedError(f"{path}: exists and is not a directory")
    marker = read_marker(path)
    if marker is None:
        if set(_entries(path)) <= _OWN_FILES - {MARKER}:
            return None
        raise FinedError(
            f"{path}: exists and is not a fined output (it has no {MARKER}); not writing "
            "into it: choose another --out, or an empty directory"
        )
    if marker["command"] != command:
        raise FinedError(
            f"{path}: holds the output of `fined {marker['command']}`, not of "
            f"`fined {command}`; choose another --out"
        )
    return marker


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FinedError(f"{path}: cannot be created (a part of the path is a file)") from None
    except OSError as err:
        raise FinedError(f"{path}: cannot be created ({describe_os_error(err)})") from None


def _write_marker(path: Path, command: str, info: dict[str, Any] | None) -> dict[str, Any]:
    marker = {
        "command": command,
        "fined": __version__,
        "id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(info or {}),
    }
    atomic_write_json(path / MARKER, marker)
    return marker


def _command_line() -> str:
    return " ".join(["fined", *sys.argv[1:]]) if sys.argv else "fined"


def _holder(fd: int) -> str:
    """Who holds the lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (
            f"another fined process (pid {info['pid']}: `{info['command']}`, since {info['since']})"
        )
    except (ValueError, KeyError, TypeError, OSError):
        return "another fined process"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock file for the block; fail at once if another process holds it."""
    if not CAN_LOCK:
        yield
        return
    import fcntl

    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise FinedError(f"{path / LOCK}: {describe_os_error(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FinedError(
                f"{path}: in use by {_holder(fd)}; wait for it to end, or choose another --out"
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        info = {"pid": os.getpid(), "command": _command_line(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _no_workers_left(path)
        yield
    finally:
        os.close(fd)  # releases the lock


def _no_workers_left(path: Path) -> None:
    """Wait (a little) until no worker process of an earlier command holds ``path``: the
    workers of a parent killed with kill -9 end with it, within a moment."""
    import fcntl

    try:
        fd = os.open(path / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise FinedError(f"{path / WORKERS_LOCK}: {describe_os_error(err)}") from None
    try:
        deadline = time.monotonic() + WORKERS_GONE_WITHIN
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FinedError(
                        f"{path}: worker processes of an earlier fined command still work in "
                        f"it ({WORKERS_GONE_WITHIN:.0f} s after it ended); wait for them to "
                        "end, or end them"
                    ) from None
                time.sleep(0.1)
    finally:
        os.close(fd)  # the check only: this command's own workers take it next


def hold_as_worker(path: str | Path) -> None:
    """Hold ``path``'s workers' lock for the rest of this process's life: this process works
    in ``path`` for the command that holds it (``--jobs``, ``--nproc``)."""
    if not CAN_LOCK:
        return
    import fcntl

    path = Path(path)
    try:
        fd = os.open(path / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise FinedError(f"{path / WORKERS_LOCK}: {describe_os_error(err)}") from None
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a claim looks (a moment)
    _HELD.append(fd)


@contextlib.contextmanager
def owned_directory(
    path: str | Path,
    command: str,
    *,
    restart: Iterable[str] | None = None,
    info: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Claim ``path`` for ``command`` (creating it), hold its lock for the block and yield
    its marker. ``restart``: the entries the command writes, deleted first (a fresh start);
    nothing else in the directory is touched."""
    path = Path(path)
    if restart is not None and path.is_symlink():
        raise FinedError(
            f"{path}: is a symbolic link; --restart deletes only inside a real directory "
            "(give the directory it points to)"
        )
    check_claimable(path, command)
    created = not path.exists()
    _make_dirs(path)
    with _locked(path):
        try:
            marker = check_claimable(path, command)  # again: now nobody else can claim it
            if restart is not None:
                for name in restart:
                    _remove(path / name)
                    remove_stale(path, name)
            yield marker or _write_marker(path, command, info)
        except BaseException:
            # A start that failed before writing anything leaves no directory behind.
            if created and set(_entries(path)) <= _OWN_FILES:
                shutil.rmtree(path, ignore_errors=True)
            raise


def _remove(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    elif entry.is_dir():
        shutil.rmtree(entry)


def _check_replaceable(out: Path, command: str) -> None:
    """An existing ``out`` may be replaced only if it holds nothing but what we wrote."""
    marker = check_claimable(out, command)
    if marker is None:
        return
    foreign = set(_entries(out)) - set(marker.get("entries", [])) - _OWN_FILES
    if foreign:
        raise FinedError(
            f"{out}: holds files fined did not write ({', '.join(sorted(foreign))}); "
            "not replacing it: move them away, or choose another --out"
        )


@contextlib.contextmanager
def _parent_locked(parent: Path) -> Iterator[None]:
    """A short lock on a directory itself, around a swap of one of its entries."""
    if not CAN_LOCK:
        yield
        return
    import fcntl

    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def recover_swap(out: Path) -> None:
    """If ``out`` is missing because a process died in the middle of replacing it, put the
    previous copy back (it waits, renamed, beside it)."""
    if out.exists() or out.is_symlink() or not out.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.[0-9a-f]+\.old$")
    left = [
        p
        for p in out.parent.iterdir()
        if (m := pattern.match(p.name)) and not process_alive(int(m.group(1)))
    ]
    if left:
        newest = max(left, key=lambda p: p.stat().st_mtime)
        os.replace(newest, out)


@contextlib.contextmanager
def replaced_directory(
    out: str | Path, command: str, info: dict[str, Any] | None = None
) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it in place of ``out`` when the
    block completes; on error the temporary is removed and ``out`` stays as it was. The
    marker records the entries written, so a later replacement can tell them from a user's.
    A symbolic link to a directory is written through: its target is replaced, the link
    kept (a link to nothing is refused)."""
    out = Path(out)
    if out.is_symlink() and out.is_dir():
        # Swapping the link itself would put a directory in its place and leave the link
        # renamed beside it; the dataset the user points at is the target.
        out = Path(os.path.realpath(out))
    recover_swap(out)
    _check_replaceable(out, command)
    _make_dirs(out.parent)
    remove_stale(out.parent, out.name)
    tmp = make_temporary_dir(out.parent, out.name)
    try:
        yield tmp
        _write_marker(tmp, command, {**(info or {}), "entries": sorted(_entries(tmp))})
        with _parent_locked(out.parent):
            _check_replaceable(out, command)
            if out.exists():
                old = out.parent / temporary_name(out.name, "old")
                os.replace(out, old)
                os.replace(tmp, out)  # a death just before this line: recover_swap undoes it
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_file(path: str | Path, overwrite: bool, option: str) -> Path:
    """A single file a command is about to write: its directory must exist (no directories
    are created for it), it must not be a directory, and an existing file is replaced only
    with ``--overwrite`` or when fined wrote it there itself and it has not changed since
    (``record_written``) — inside one of our output directories too, where a user's notes,
    or another command's results, may lie."""
    path = Path(path)
    if path.is_dir():
        raise FinedError(f"{option} {path}: is a directory (a file name was expected)")
    if not path.parent.is_dir():
        raise FinedError(f"{option} {path}: no directory {path.parent} (create it first)")
    if (path.exists() or path.is_symlink()) and not overwrite and not written_by_fined(path):
        raise FinedError(
            f"{option} {path}: exists and is not a file this command wrote there (or it "
            "changed since): it is replaced only on request; pass --overwrite"
        )
    return path


# -- single files: which ones fined wrote -------------------------------------------------------
# Beside the single files a command writes (scores, plots, exported models), a record of their
# names and digests: the proof that a file of that name is ours to replace.
WRITTEN = ".fined-written.json"


def _written_record(directory: Path) -> dict[str, Any] | None:
    """The record of ``directory`` ({name: {"sha256", "bytes"}}); {} when there is none;
    None when a file of that name is not ours (then nothing is recorded there)."""
    file = directory / WRITTEN
    if not file.exists() and not file.is_symlink():
        return {}
    try:
        doc = json.loads(file.read_bytes()) if file.is_file() and not file.is_symlink() else None
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("written_by") != "fined":
        return None
    files = doc.get("files")
    return files if isinstance(files, dict) else None


def written_by_fined(path: Path) -> bool:
    """Whether ``path`` is a file a fined command wrote (``record_written``), unchanged."""
    if path.is_symlink() or not path.is_file():
        return False
    entry = (_written_record(path.parent) or {}).get(path.name)
    if not isinstance(entry, dict) or entry.get("bytes") != path.stat().st_size:
        return False
    return entry.get("sha256") == _file_digest(path)


def record_written(path: str | Path) -> None:
    """Record the file ``path`` just written (its name and digest) beside it, so that the
    command may replace it later without ``--overwrite``; records of files gone are
    dropped."""
    path = Path(path)
    with _parent_locked(path.parent):
        files = _written_record(path.parent)
        if files is None:
            return  # a file of the record's name that fined did not write: left alone
        files = {name: entry for name, entry in files.items() if (path.parent / name).is_file()}
        files[path.name] = {"sha256": _file_digest(path), "bytes": path.stat().st_size}
        atomic_write_json(path.parent / WRITTEN, {"written_by": "fined", "files": files})


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
