"""Behaviour histories joined strictly before each impression, vectorized.

For every query (user, time) we want the user's last ``max_len`` events with an event time
*strictly* earlier than the query time: an event at the same second as the impression is not
history (it may be the impression itself), and nothing later may leak in.

The events are sorted once (``SortedEvents``); queries can then be asked in chunks, so the
index arrays a join builds stay proportional to the chunk, not to all queries at once.
"""

from __future__ import annotations

import numpy as np

_TIME_BITS = 32  # a sort key is (user rank << 32) | (time - earliest event time)


class SortedEvents:
    """Events sorted by (user, time), ties in their given order; ``user`` are dense ranks
    (non-negative, < 2^31) or any integer ids (ranked here)."""

    def __init__(self, user: np.ndarray, time: np.ndarray, ranks: np.ndarray | None = None):
        """``ranks``: the sorted ids that ``user`` and later queries index into; None: the
        users are already ranks."""
        self.ranks = ranks
        rank = self._rank(user)
        self.t0 = int(time.min(initial=0))
        span = int(time.max(initial=0)) - self.t0
        if span >= (1 << _TIME_BITS) - 1:
            raise ValueError("event times must span < 2^32 (use seconds, not milliseconds)")
        key = (rank << _TIME_BITS) | (time.astype(np.int64) - self.t0)
        self.order = np.argsort(key, kind="stable")  # stable: ties keep the given order
        self.keys = key[self.order]
        self.span = span

    def _rank(self, user: np.ndarray) -> np.ndarray:
        if self.ranks is None:
            return user.astype(np.int64)
        return np.searchsorted(self.ranks, user).astype(np.int64)

    def before(
        self, user: np.ndarray, time: np.ndarray, max_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices of each query's history events, oldest first.

        Returns ``(offsets [Q+1], events [offsets[-1]])``: the history of query q is
        ``events[offsets[q]:offsets[q+1]]``, indices into the events as given.
        """
        rank = self._rank(user)
        if self.ranks is not None:  # a user with no events at all: rank -1, no history
            found = rank < len(self.ranks)
            found[found] = self.ranks[rank[found]] == user[found]
            rank = np.where(found, rank, -1)
        # Times outside the events' range clip to "before all" / "after all" of the user's.
        rel = np.clip(time.astype(np.int64) - self.t0, 0, self.span + 1)
        first_of_user = np.searchsorted(self.keys, rank << _TIME_BITS, side="left")
        end = np.searchsorted(self.keys, (rank << _TIME_BITS) | rel, side="left")
        end = np.where(rank < 0, first_of_user, end)  # rank -1: no events
        begin = np.maximum(first_of_user, end - max_len)
        counts = end - begin
        offsets = np.concatenate([[0], np.cumsum(counts)])
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
        return offsets, self.order[np.repeat(begin, counts) + within]


def events_before(
    query_user: np.ndarray,
    query_time: np.ndarray,
    event_user: np.ndarray,
    event_time: np.ndarray,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of each query's history events, oldest first (all queries at once).

    Returns ``(offsets [Q+1], events [offsets[-1]])``: the history of query q is
    ``events[offsets[q]:offsets[q+1]]``, indices into the event arrays.
    """
    ids = np.unique(event_user)
    return SortedEvents(event_user, event_time, ids).before(query_user, query_time, max_len)
