"""Worker processes bound to the command that started them.

``fined run --jobs`` and ``fined tune --jobs`` work in spawned processes, inside the output
directory their parent claimed and locked. A parent killed with kill -9 runs nothing of its
own, and its lock goes with it: workers left running would write beside the next command
that claims the directory. So each worker dies with its parent — on Linux the kernel sends
it SIGKILL the moment the parent ends (``PR_SET_PDEATHSIG``), elsewhere a thread that
watches the parent's id does, within half a second — and holds the directory's workers'
lock for its whole life (``fined.outputs.hold_as_worker``): a command that claims the
directory waits for every worker of an earlier one to be gone, and never starts beside one.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from fined.outputs import hold_as_worker

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def worker_pool(
    jobs: int,
    directory: Path,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> ProcessPoolExecutor:
    """``jobs`` spawned processes (a forked copy of a process with PyTorch's thread pools can
    hang) that work in ``directory`` for this process, die with it and hold the
    directory's workers' lock; each then runs ``initializer(*initargs)``."""
    context = multiprocessing.get_context("spawn")
    bound = (os.getpid(), str(directory), initializer, initargs)
    return ProcessPoolExecutor(jobs, mp_context=context, initializer=_bind, initargs=bound)


def _bind(
    parent: int,
    directory: str,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    # The lock first, then the parent: a worker whose parent died before it took the lock
    # ends here, so a command that found the lock free never meets it later.
    hold_as_worker(Path(directory))
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """End this process with ``sig`` when the process ``parent`` (its parent) ends."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # it ended before the kernel was told
        os.kill(os.getpid(), sig)
    threading.Thread(target=_watch, args=(parent, sig), daemon=True).start()


def _watch(parent: int, sig: int) -> None:
    """Where the kernel cannot be told (not Linux): notice that the parent is gone."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), sig)


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess``: the child gets ``sig`` when this process ends
    (Linux; elsewhere nothing). SIGTERM lets a launcher such as torchrun stop its own
    children."""
    parent = os.getpid()

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec
