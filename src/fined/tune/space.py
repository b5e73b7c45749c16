"""A search space: ``--set`` keys and what each may take, from YAML::

    train.lr: {log: [1.0e-4, 1.0e-2]}      # log-uniform between the two
    dropout: [0.0, 0.1, 0.2]               # one of these
    train.embedding_l2: {log: [1.0e-7, 1.0e-4], points: 4}   # 4 log-spaced points in a grid
    mlp: [[256, 128], [400, 400, 400]]     # choices may be lists
    train.batch_size: {int: [512, 4096]}

A grid search takes the choices as they are and ``points`` values of a range (3 by default).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fined.config import load_yaml
from fined.errors import FinedError


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str  # choice | log | uniform | int
    values: tuple[Any, ...] = ()  # choices
    low: float = 0.0
    high: float = 0.0
    points: int = 3  # values of a range in a grid

    def grid(self) -> list[Any]:
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "log":
            step = (math.log(self.high) - math.log(self.low)) / max(self.points - 1, 1)
            return [math.exp(math.log(self.low) + i * step) for i in range(self.points)]
        values = [self.low + i * (self.high - self.low) / max(self.points - 1, 1)
                  for i in range(self.points)]  # fmt: skip
        return sorted({round(v) for v in values}) if self.kind == "int" else values


def _dimension(key: str, spec: Any, where: str) -> Dimension:
    if isinstance(spec, list):
        if not spec:
            raise FinedError(f"{where}: {key}: no choice given")
        return Dimension(key, "choice", tuple(spec))
    if isinstance(spec, dict):
        kinds = [k for k in ("log", "uniform", "int") if k in spec]
        extra = set(spec) - {"log", "uniform", "int", "points"}
        if len(kinds) != 1 or extra:
            raise FinedError(
                f"{where}: {key}: expected a list of choices, or one of log / uniform / int "
                "with [low, high] (and points for a grid)"
            )
        kind = kinds[0]
        bounds = spec[kind]
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise FinedError(f"{where}: {key}.{kind}: expected [low, high]")
        low, high = (float(b) for b in bounds)
        if not low < high or (kind == "log" and low <= 0):
            raise FinedError(f"{where}: {key}.{kind}: need low < high (and low > 0 for log)")
        points = spec.get("points", 3)
        if not isinstance(points, int) or points < 1:
            raise FinedError(f"{where}: {key}.points: expected a positive integer")
        return Dimension(key, kind, (), low, high, points)
    raise FinedError(f"{where}: {key}: expected a list of choices or a range")


def load_space(path: str | Path) -> list[Dimension]:
    doc = load_yaml(path)
    if not isinstance(doc, dict) or not doc:
        raise FinedError(f"{path}: expected a mapping of --set keys to what they may take")
    return [_dimension(str(key), spec, str(path)) for key, spec in doc.items()]


def grid(space: list[Dimension]) -> list[dict[str, Any]]:
    """Every combination, in a fixed order."""
    keys = [d.key for d in space]
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(d.grid() for d in space))
    ]
