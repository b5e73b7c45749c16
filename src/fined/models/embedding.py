"""Field embeddings: every input field of a ``Batch`` as a vector of the same size.

One table holds the rows of every vocabulary, each at its own offset (features that share a
vocabulary share rows: a history of items and the target item live in one space). One
gather serves all id fields of a batch, and the backward pass is one index-add; the benchmark
``benchmarks/throughput.py --embedding per_field`` measures the alternative of one table per
field.
"""

from __future__ import annotations

import torch
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap


class FeatureEmbedding(nn.Module):
    """Embeds a batch into ``[B, F, d]`` field vectors.

    Fields, in order: the id fields (categorical and bucketized numeric), the float fields (a
    learned vector per field scaled by the value), then one field per pooled sequence (masked
    mean of its id embeddings). Sequences named in ``raw_sequences`` are not pooled; they are
    returned unpooled for target attention (DIN).
    """

    id_offsets: torch.Tensor  # a buffer: each id field's offset in the table

    def __init__(
        self,
        feature_map: FeatureMap,
        dim: int,
        raw_sequences: tuple[str, ...] = (),
        linear: bool = False,
        init_std: float = 1e-4,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        fmap = feature_map
        owners: dict[str, int] = {}
        for f in fmap.features:
            if f.vocab_size and f.vocab not in owners:
                owners[f.vocab] = f.vocab_size
        offsets, total = {}, 0
        for name, size in owners.items():
            offsets[name], total = total, total + size
        self.dim = dim
        self.table = nn.Embedding(total, dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=init_std)
        self.linear = nn.Embedding(total, 1, sparse=sparse) if linear else None
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
        self.register_buffer(
            "id_offsets",
            torch.tensor([offsets[f.vocab] for f in fmap.id_features], dtype=torch.long),
        )
        self.float_vectors = nn.Parameter(torch.randn(len(fmap.float_features), dim) * init_std)
        self.float_linear = nn.Parameter(torch.zeros(len(fmap.float_features))) if linear else None
        seqs = fmap.sequence_features
        missing = set(raw_sequences) - {f.name for f in seqs}
        if missing:
            raise ValueError(f"no sequence feature(s) {sorted(missing)}")
        self.pooled = [f.name for f in seqs if f.name not in raw_sequences]
        self.seq_offset = {f.name: offsets[f.vocab] for f in seqs}
        self.num_fields = len(fmap.id_features) + len(fmap.float_features) + len(self.pooled)

    def lookup_sequence(self, batch: Batch, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, L, d], mask [B, L])`` for one sequence feature (mask: non-padding)."""
        ids = batch.sequences[name].long()
        mask = ids > 0
        return self.table(ids + self.seq_offset[name]), mask

    def forward(self, batch: Batch) -> torch.Tensor:
        """``[B, F, d]`` field vectors (raw sequences: see ``lookup_sequence``)."""
        parts = []
        if batch.ids.shape[1]:
            parts.append(self.table(batch.ids.long() + self.id_offsets))
        if batch.floats.shape[1]:
            parts.append(batch.floats.unsqueeze(-1) * self.float_vectors)
        for name in self.pooled:
            emb, mask = self.lookup_sequence(batch, name)
            m = mask.unsqueeze(-1).to(emb.dtype)
            parts.append(((emb * m).sum(1) / m.sum(1).clamp_min(1.0)).unsqueeze(1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def linear_logit(self, batch: Batch) -> torch.Tensor:
        """First-order term ``[B]``: a weight per id (and per float field, times its value)."""
        if self.linear is None:
            raise RuntimeError("FeatureEmbedding was built without linear=True")
        out = self.linear(batch.ids.long() + self.id_offsets).sum((1, 2))
        if self.float_linear is not None and batch.floats.shape[1]:
            out = out + batch.floats @ self.float_linear
        return out
