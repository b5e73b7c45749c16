"""``fined run --jobs N``: the protocol's (seed, model) chains in N worker processes.

Chains of different seeds or models share nothing but the prepared data (read only) and the
knowledge bases (built once per variant and seed, under a file lock), and every cell's seed
is derived from (seed, period): a cell computes the same numbers in a worker as in a single
process with the same number of threads. The workers split the machine's threads between
them; the parent relays their progress and re-raises the first error. They die with the
parent and hold the run directory while they live (``fined.workers``). What they leave is an
ordinary run directory, which the parent then reads as a resumed run would.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

import torch

from fined.errors import FinedError
from fined.io import CAN_LOCK
from fined.protocol.progress import Report, RunProgress
from fined.workers import worker_pool

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
    # A plain queue handed to each worker as it starts (a manager's queue would be one more
    # process, which outlived a parent killed with kill -9).
    messages = multiprocessing.get_context("spawn").Queue()
    with worker_pool(jobs, root, _receive, (messages, threads)) as pool:
        pending: set[Future] = {
            pool.submit(_in_worker, worker, config, root, seed, model, i)
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


_MESSAGES: list[Any] = []  # in a worker: the queue its progress goes back on


def _receive(messages: Any, threads: int) -> None:
    """A worker's start: its share of the threads, and the queue to report on."""
    torch.set_num_threads(threads)
    messages.cancel_join_thread()  # progress is for display: never wait at exit to deliver it
    _MESSAGES.append(messages)


def _in_worker(worker: Worker, config: Any, root: Path, seed: int, model: str, index: int) -> None:
    messages = _MESSAGES[0]

    def report(done: int, total: int, current: str, result: str) -> None:
        messages.put((index, done, current, result))

    worker(config, root, seed, model, report)
