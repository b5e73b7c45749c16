"""Numeric transforms fitted on the fit periods: quantile buckets or standardization."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fined.data.feature_map import OOV
from fined.data.schema import FeatureSpec


@dataclass
class NumericTransform:
    """``bucketize``: value -> bucket id (2 + number of boundaries below it), missing -> OOV.
    ``scale``: value -> (value - mean) / std as float32, missing -> 0."""

    kind: str
    boundaries: list[float] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, spec: FeatureSpec, sample: np.ndarray) -> NumericTransform:
        values = sample[~np.isnan(sample)]
        if spec.transform == "scale":
            if values.size == 0:
                return cls("scale")
            std = float(values.std())
            return cls("scale", mean=float(values.mean()), std=std if std > 0 else 1.0)
        if values.size == 0:
            return cls("bucketize")
        qs = np.quantile(values, np.linspace(0, 1, spec.n_buckets + 1)[1:-1])
        return cls("bucketize", boundaries=[float(b) for b in np.unique(qs)])

    @property
    def vocab_size(self) -> int:
        """Bucket ids 2..len(boundaries)+2, plus padding and missing."""
        return len(self.boundaries) + 3 if self.kind == "bucketize" else 0

    def apply(self, values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        if self.kind == "scale":
            out = ((values - self.mean) / self.std).astype(np.float32)
            out[missing] = 0.0
            return out
        out = (np.searchsorted(self.boundaries, values, side="right") + 2).astype(np.int32)
        out[missing] = OOV
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BottomKSample:
    """A uniform random sample without replacement of at most ``k`` values from a stream:
    keep the values with the k smallest random priorities (deterministic by seed)."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.rng = np.random.default_rng(seed)
        self.values = np.empty(0)
        self.priority = np.empty(0)

    def add(self, values: np.ndarray) -> None:
        prio = self.rng.random(len(values))
        self.values = np.concatenate([self.values, values])
        self.priority = np.concatenate([self.priority, prio])
        if len(self.values) > self.k:
            keep = np.argpartition(self.priority, self.k)[: self.k]
            self.values, self.priority = self.values[keep], self.priority[keep]
