"""Atomic writes: a crash or an error never leaves a half-written artefact behind.

Everything is written to a temporary sibling first and renamed into place only when complete
(a rename within one file system is atomic). Temporary names carry the writer's process id,
so that the leftovers of a process killed mid-write are recognised and removed by the next
writer of the same file. Files and directories get the permissions the user's umask allows.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fined.errors import FinedError

# Windows has no POSIX locks: work that needs one refuses to start there.
CAN_LOCK = importlib.util.find_spec("fcntl") is not None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Temporary files are created 0600 (nobody reads a half-written file); what we publish
# follows the umask, as any file the user makes would.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (another user's counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_name(name: str, kind: str = "tmp") -> str:
    """``.NAME.PID.TOKEN.KIND``: a sibling name that says which process made it."""
    return f".{name}.{os.getpid()}.{os.urandom(4).hex()}.{kind}"


def remove_stale(directory: Path, name: str) -> None:
    """Remove the temporaries of ``name`` in ``directory`` left by processes that died."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[0-9a-z]+\.(tmp|old)$")
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or process_alive(int(m.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def spill_directory(prefix: str, parent: Path | None = None) -> Path:
    """A new work directory for one process's spill files, in ``parent`` (None: the system
    temporary directory), named ``PREFIX.HOST.PID.TOKEN``. The owner removes it when done;
    those a killed process left (this host's, their process gone) are removed here first,
    as the next writer removes any temporary."""
    import socket
    import tempfile

    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    # Another host's process ids mean nothing here: only this host's leftovers are swept.
    pattern = re.compile(rf"^{re.escape(prefix)}\.{re.escape(host)}\.(\d+)\.[0-9A-Za-z_]+$")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        entries = []
    for entry in entries:
        m = pattern.match(entry.name)
        dead = m is not None and not process_alive(int(m.group(1)))
        if dead and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}.{host}.{os.getpid()}.", dir=parent))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    if path.is_dir():
        raise FinedError(f"{path}: is a directory (a file name was expected)")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    tmp = path.parent / temporary_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_bytes(path: str | Path, what: str) -> bytes:
    """The bytes of a file we are asked to read; every way of failing is a FinedError that
    says which file and why (missing, a directory, permission denied, ...)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FinedError(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise FinedError(f"{path}: is a directory ({what} expected)") from None
    except OSError as err:
        raise FinedError(f"{path}: {describe_os_error(err)} ({what})") from None


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON document we wrote; a missing, unreadable or corrupt file is a FinedError."""
    raw = read_bytes(path, what)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FinedError(f"{path}: not a valid {what} ({err})") from None


def describe_os_error(err: OSError) -> str:
    """A short reason for an operating-system error, as a user would say it (also for the
    errors of libraries such as Arrow, which carry the code only in their message)."""
    code = err.errno
    if code is None and (found := re.search(r"\[errno (\d+)\]", str(err), re.I)):
        code = int(found.group(1))
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENOSPC:
        return "no space left on device"
    if code == errno.EDQUOT:
        return "disk quota exceeded"
    if code == errno.EFBIG:
        return "file too large (a file-size limit was reached)"
    if code == errno.EROFS:
        return "read-only file system"
    reason = err.strerror or str(err)
    return reason[0].lower() + reason[1:] if reason else "input/output error"


@contextlib.contextmanager
def exclusive(lock: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created if missing) across processes: for
    work that two processes could otherwise do at once into the same place. Without POSIX
    locks (Windows) it does nothing: only single-process runs are allowed there."""
    if not CAN_LOCK:
        yield
        return
    import fcntl

    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_temporary_dir(parent: Path, name: str) -> Path:
    """A fresh temporary sibling directory for ``parent / name`` (see ``temporary_name``)."""
    tmp = parent / temporary_name(name)
    tmp.mkdir()  # mode 0777 less the umask, like any directory the user makes
    return tmp
