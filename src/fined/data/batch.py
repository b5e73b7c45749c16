"""``Batch``: a set of rows as contiguous tensors, the unit every model and the trainer
consume. It depends on PyTorch only (reading periods from Parquet is ``fined.data.loader``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from fined.data.feature_map import OOV, UNLIMITED


@dataclass(frozen=True)
class RowKnowledge:
    """What a frozen knowledge base computes for each row, computed once for a set of rows
    and carried beside them (``Batch.knowledge``; ``fined.knowledge`` makes it): the
    knowledge vectors ``v [B, K, d]`` and each slot's click logit ``slot_logits [B, K]``."""

    v: torch.Tensor
    slot_logits: torch.Tensor

    def map(self, fn) -> RowKnowledge:
        return RowKnowledge(fn(self.v), fn(self.slot_logits))

    def tensors(self) -> list[torch.Tensor]:
        return [self.v, self.slot_logits]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @staticmethod
    def concat(parts: Sequence[RowKnowledge]) -> RowKnowledge:
        return RowKnowledge(torch.cat([p.v for p in parts]),
                            torch.cat([p.slot_logits for p in parts]))  # fmt: skip


@dataclass
class Batch:
    """A set of rows as tensors.

    - ``ids``: ``[B, F_id]`` int32, one column per ``FeatureMap.id_features``.
    - ``floats``: ``[B, F_float]`` float32, one column per ``FeatureMap.float_features``.
    - ``sequences``: name -> ``[B, L]`` int32 (0 = padding).
    - ``label``: ``[B]`` float32. ``time``: ``[B]`` int64.
    - ``group``: ``[B]`` int64 user index for gAUC (raw, never mapped to OOV), or None.
    - ``knowledge``: a frozen KB's knowledge of each row, computed once for the rows of a fit
      (``Trainer``), or None: the model computes it batch by batch.
    """

    ids: torch.Tensor
    floats: torch.Tensor
    sequences: dict[str, torch.Tensor]
    label: torch.Tensor
    time: torch.Tensor
    group: torch.Tensor | None = None
    knowledge: RowKnowledge | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def _map(self, fn) -> Batch:
        return Batch(
            ids=fn(self.ids),
            floats=fn(self.floats),
            sequences={k: fn(v) for k, v in self.sequences.items()},
            label=fn(self.label),
            time=fn(self.time),
            group=None if self.group is None else fn(self.group),
            knowledge=None if self.knowledge is None else self.knowledge.map(fn),
        )

    def take(self, index: torch.Tensor) -> Batch:
        return self._map(lambda t: t.index_select(0, index))

    def slice(self, start: int, end: int) -> Batch:
        return self._map(lambda t: t[start:end])

    def forget_later_ids(self, id_limits: torch.Tensor, seq_limits: dict[str, int]) -> Batch:
        """The same rows with every id at or above its field's limit as OOV: what a model
        that knows only the vocabularies as they stood then sees (``FeatureMap.known_limits``
        gives the limits; ``id_limits`` is ``[F_id]``)."""
        ids = torch.where(self.ids >= id_limits, OOV, self.ids) if self.ids.numel() else self.ids
        sequences = {
            k: s if seq_limits[k] >= UNLIMITED else torch.where(s >= seq_limits[k], OOV, s)
            for k, s in self.sequences.items()
        }
        return Batch(ids, self.floats, sequences, self.label, self.time, self.group,
                     self.knowledge)  # fmt: skip

    def clone(self) -> Batch:
        return self._map(torch.clone)

    def copy_(self, other: Batch) -> None:
        """Overwrite these tensors with ``other``'s (same shapes): a CUDA graph reads its
        batch from fixed tensors."""
        for mine, theirs in zip(self.tensors(), other.tensors(), strict=True):
            mine.copy_(theirs, non_blocking=True)

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def tensors(self) -> list[torch.Tensor]:
        return [self.ids, self.floats, self.label, self.time, *self.sequences.values(),
                *([self.group] if self.group is not None else []),
                *(self.knowledge.tensors() if self.knowledge is not None else [])]  # fmt: skip

    def pin(self) -> Batch:
        """In page-locked host memory (copies to a GPU can then overlap the work)."""
        return self._map(lambda t: t.pin_memory())

    @property
    def device(self) -> torch.device:
        return self.label.device

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in memory (what keeping them costs), their knowledge included."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @staticmethod
    def concat(parts: Sequence[Batch]) -> Batch:
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        kw: dict[str, Any] = {}
        for f in fields(Batch):
            vals = [getattr(p, f.name) for p in parts]
            if f.name == "sequences":
                kw[f.name] = {k: torch.cat([v[k] for v in vals]) for k in first.sequences}
            elif f.name == "knowledge":  # kept only where every part carries it
                whole = all(v is not None for v in vals)
                kw[f.name] = RowKnowledge.concat(vals) if whole else None
            elif vals[0] is None:
                kw[f.name] = None
            else:
                kw[f.name] = torch.cat(vals)
        return Batch(**kw)
