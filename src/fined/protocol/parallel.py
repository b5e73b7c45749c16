"""``fined run --jobs N``: the protocol's (seed, model) chains in N worker processes.

Chains of different seeds or models share nothing but the prepared data (read only) and the
knowledge bases (built once per variant and seed, under a file lock), and every cell's seed
is derived from (seed, period): a cell computes the same numbers in a worker as in a single
process with the same number of threads. The workers split the machine's threads between
them; the parent relays their progress and re-raises the first error. What they leave is an
ordinary run directory, which the parent then reads as a resumed run would.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from fined.errors import FinedError
from fined.io import CAN_LOCK
from fined.protocol.progress import Report, RunProgress

Worker = Callable[[Any, Path, int, str, Report], None]


def run_in_workers(
    config: Any,
    root: Path,
    progress: RunProgress,
    groups: list[tuple[int, str]],
    jobs: int,
    worker: Worker,
) -> None:
    """Run ``worker(config, root, seed, model, report)`` for every (seed, model) of
    ``groups`` in ``jobs`` spawned processes (a module-level function, so that it pickles),
    counting their steps into ``progress``."""
    jobs = min(jobs, len(groups))
    if jobs < 2:
        return  # one chain: the parent's own pass runs it, with every thread
    if not CAN_LOCK:
        raise FinedError("--jobs above 1 needs POSIX file locks (Linux, macOS); use --jobs 1")
    threads = max(1, torch.get_num_threads() // jobs)
    # Spawned, not forked: a forked copy of a process with PyTorch's thread pools can hang.
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        messages = manager.Queue()
        pending: set[Future] = {
            pool.submit(_in_worker, worker, config, root, seed, model, threads, messages, i)
            for i, (seed, model) in enumerate(groups)
        }
        seen: dict[int, int] = {}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                _relay(progress, messages, seen)
                for future in finished:
                    future.result()  # a worker's error ends the run here
        except BaseException:
            for future in pending:
                future.cancel()  # chains not started yet; running ones finish their cell
            raise
        _relay(progress, messages, seen)


def _relay(progress: RunProgress, messages: Any, seen: dict[int, int]) -> None:
    """Pass the workers' progress on, counting each worker's finished cells once."""
    while True:
        try:
            worker, done, current, result = messages.get_nowait()
        except queue.Empty:
            return
        progress.advance(done - seen.get(worker, 0), current, result)
        seen[worker] = done


def _in_worker(
    worker: Worker,
    config: Any,
    root: Path,
    seed: int,
    model: str,
    threads: int,
    messages: Any,
    index: int,
) -> None:
    torch.set_num_threads(threads)

    def report(done: int, total: int, current: str, result: str) -> None:
        messages.put((index, done, current, result))

    worker(config, root, seed, model, report)
