"""The address space a ``fined`` process needs, and how it keeps within ``ulimit -v``.

PyTorch, Arrow, polars and scikit-learn take 1.4 GiB of address space to load, and a small
job peaks at 3.1 GiB with one thread per pool (measured on Linux, glibc). Every thread a pool
starts reserves more: its stack, and a malloc arena of up to 64 MiB. Under a limit
(``RLIMIT_AS``, ``ulimit -v``) a pool that cannot start its threads fails inside its own
library: polars' pool panicked at its first query (``could not spawn threads``), and with
``RUST_BACKTRACE`` set the panic's backtrace asked for memory it could not get (3.5 GiB, 32
threads: one run hung, one ended in a ``PanicException`` traceback, one finished); at 3 GiB
Rust aborted the process. fined cannot catch these, so it acts before any library loads
(``fit_to_address_space``, the first thing the command does): below ``MIN_ADDRESS_SPACE`` it
refuses in one line; above it, the pools are given the threads the limit leaves room for
(``POLARS_MAX_THREADS``, ``OMP_NUM_THREADS``, unless already set). Measured: 4 GiB runs a
small ``fined run`` with 32 and with 64 polars threads.
"""

from __future__ import annotations

import os

from fined.errors import FinedError

MIN_ADDRESS_SPACE = 4 << 30  # below this no command starts
_BASE = 7 << 29  # 3.5 GiB: a small job with one thread per pool (3.1 GiB), and a margin
_PER_THREAD = 64 << 20  # a pool thread's malloc arena (glibc's largest) with its stack inside


def address_space_limit() -> int | None:
    """This process's address-space limit in bytes (None: none, or not known here)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def fit_to_address_space() -> None:
    """Refuse an address-space limit too small to work in; under a larger one, size the
    libraries' thread pools to it. Call before polars or PyTorch is imported."""
    limit = address_space_limit()
    if limit is None:
        return
    if limit < MIN_ADDRESS_SPACE:
        raise FinedError(
            f"the address space is limited to {limit / 2**30:.1f} GiB (ulimit -v): fined needs "
            f"at least {MIN_ADDRESS_SPACE >> 30} GiB (its libraries take 1.4 GiB to load, "
            "their thread pools more); raise the limit (ulimit -v unlimited)"
        )
    threads = max(1, min(os.cpu_count() or 1, (limit - _BASE) // _PER_THREAD))
    for pool in ("POLARS_MAX_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(pool, str(threads))
