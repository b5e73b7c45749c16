"""Atomic writes: a crash or an error never leaves a half-written artefact behind.

Everything is written to a temporary sibling first and renamed into place only when complete
(a rename within one file system is atomic).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fined.errors import FinedError

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; work that needs one refuses to start there
    fcntl = None
CAN_LOCK = fcntl is not None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON document we wrote; a missing or corrupt file is a FinedError."""
    path = Path(path)
    if not path.is_file():
        raise FinedError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FinedError(f"{path}: not a valid {what} ({err})") from None


@contextlib.contextmanager
def atomic_dir(out: str | Path, marker: str) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then swap it in place of ``out``.

    ``marker`` is the file that identifies a directory we own: an existing non-empty ``out``
    without it is refused rather than overwritten. On error the temporary directory is removed
    and any previous ``out`` is left untouched.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise FinedError(f"{out}: exists and is not a fined output (no {marker}); not overwriting")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def exclusive(lock: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created if missing) across processes: for
    work that two processes could otherwise do at once into the same place. Without POSIX
    locks (Windows) it does nothing: only single-process runs are allowed there."""
    if fcntl is None:
        yield
        return
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
