"""Which rows a command trains, validates and tests on, from period specs.

A period spec is a comma list of periods or inclusive ranges, by index or name:
``0:5``, ``1997-09:1998-02``, ``0,2,4``, ``-1`` (the last). The validation spec is
``holdout`` (the held-out tails of the training periods, the default), ``tail`` or
``tail:0.1`` (the last fraction of all training rows by time), or a period spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.data.loader import PeriodStore
from fined.errors import FinedError


def parse_periods(spec: str, fmap: FeatureMap) -> list[int]:
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if ":" in part and not _is_name(part, fmap):
            lo, hi = part.split(":", 1)
            a = fmap.period_index(lo) if lo else 0
            b = fmap.period_index(hi) if hi else len(fmap.periods) - 1
            if b < a:
                raise FinedError(f"period range {part!r} is empty")
            out.extend(range(a, b + 1))
        else:
            out.append(fmap.period_index(part))
    if not out:
        raise FinedError(f"no period in {spec!r}")
    return sorted(set(out))


def _is_name(part: str, fmap: FeatureMap) -> bool:
    return any(p.name == part for p in fmap.periods)


@dataclass
class Split:
    train: Batch
    valid: Batch
    test: Batch | None
    train_periods: list[int]
    test_periods: list[int]


def tail_split(data: Batch, fraction: float) -> tuple[Batch, Batch]:
    """The last ``fraction`` of rows by time (ties by position) as validation."""
    order = torch.argsort(data.time, stable=True)
    cut = len(data) - max(1, round(len(data) * fraction))
    return data.take(order[:cut]), data.take(order[cut:])


def _fraction(valid: str) -> float:
    text = valid.split(":", 1)[1]
    try:
        return float(text)
    except ValueError:
        raise FinedError(f"--valid {valid!r}: {text!r} is not a fraction (e.g. tail:0.1)") from None


def make_split(
    store: PeriodStore, train: str, valid: str = "holdout", test: str | None = None
) -> Split:
    fmap = store.feature_map
    train_p = parse_periods(train, fmap)
    last = train_p[-1]
    if valid == "holdout":
        tr, va = store.load(train_p, "train"), store.load(train_p, "holdout")
    elif valid.startswith("tail"):
        fraction = _fraction(valid) if ":" in valid else fmap.holdout_fraction
        if not 0 < fraction < 1:
            raise FinedError(f"--valid {valid!r}: the fraction must lie in (0, 1)")
        tr, va = tail_split(store.load(train_p), fraction)
    else:
        valid_p = parse_periods(valid, fmap)
        if set(valid_p) & set(train_p):
            raise FinedError("validation periods overlap the training periods")
        tr, va = store.load(train_p), store.load(valid_p, known_through=last)
    test_p = parse_periods(test, fmap) if test else []
    if test_p and min(test_p) <= last:
        raise FinedError("test periods must come after the training periods")
    te = store.load(test_p, known_through=last) if test_p else None
    return Split(tr, va, te, train_p, test_p)
