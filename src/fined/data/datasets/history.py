"""Behaviour histories joined strictly before each impression, vectorized.

For every query (user, time) we want the user's last ``max_len`` events with an event time
*strictly* earlier than the query time: an event at the same second as the impression is not
history (it may be the impression itself), and nothing later may leak in.
"""

from __future__ import annotations

import numpy as np


def events_before(
    query_user: np.ndarray,
    query_time: np.ndarray,
    event_user: np.ndarray,
    event_time: np.ndarray,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of each query's history events, oldest first.

    Returns ``(offsets [Q+1], events [offsets[-1]])``: the history of query q is
    ``events[offsets[q]:offsets[q+1]]``, indices into the event arrays.
    """
    users, inverse = np.unique(np.concatenate([event_user, query_user]), return_inverse=True)
    del users
    ev_rank, q_rank = inverse[: len(event_user)], inverse[len(event_user) :]
    t0 = min(event_time.min(initial=0), query_time.min(initial=0))
    t1 = max(event_time.max(initial=0), query_time.max(initial=0))
    if t1 - t0 >= 1 << 32:
        raise ValueError("events_before: times must span < 2^32 (use seconds, not milliseconds)")
    # One sortable int64 key per (user, time): user rank in the high bits, time in the low 32.
    ev_key = (ev_rank.astype(np.int64) << 32) | (event_time.astype(np.int64) - t0)
    q_key = (q_rank.astype(np.int64) << 32) | (query_time.astype(np.int64) - t0)
    order = np.argsort(ev_key, kind="stable")
    sorted_keys = ev_key[order]
    first_of_user = np.searchsorted(sorted_keys, q_rank.astype(np.int64) << 32, side="left")
    end = np.searchsorted(sorted_keys, q_key, side="left")  # events strictly before
    begin = np.maximum(first_of_user, end - max_len)
    counts = end - begin
    offsets = np.concatenate([[0], np.cumsum(counts)])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
    return offsets, order[np.repeat(begin, counts) + within]
