"""Raw rows encoded as a prepared dataset encodes them: for scoring new rows with a trained
(or exported) model. The vocabularies and transforms are read from the prepared directory
(``vocab.json`` checked against the digest ``feature_map.json`` holds)::

    from fined.data.raw_rows import RawRowEncoder

    encoder = RawRowEncoder("runs/ml100k")
    inputs = encoder.encode({"user_id": [196, 7], "item_id": [242, 51], ...})  # one per feature
    inputs["ids"], inputs["floats"], inputs["hist_items"]   # numpy arrays, the artefact's inputs

An id the vocabulary does not hold becomes OOV; an exported model also maps ids that entered
the vocabulary after its training periods to OOV itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fined.data.encoding import RowEncoder
from fined.data.feature_map import FeatureMap
from fined.data.numeric import NumericTransform
from fined.data.schema import FeatureSpec
from fined.data.vocab import Vocabulary
from fined.errors import FinedError
from fined.io import read_bytes


class RawRowEncoder:
    def __init__(self, prepared: str | Path) -> None:
        directory = Path(prepared)
        self.feature_map = fmap = FeatureMap.load(directory)
        raw = read_bytes(directory / "vocab.json", "vocabularies")
        if hashlib.sha256(raw).hexdigest() != fmap.vocab_sha256:
            raise FinedError(f"{directory / 'vocab.json'}: does not match feature_map.json")
        vocabs = {k: Vocabulary.from_json(v) for k, v in json.loads(raw).items()}
        specs = [
            FeatureSpec(
                name=f.name, kind=f.kind, source=f.source,
                vocab=None if f.vocab == f.name else f.vocab, max_len=f.max_len,
            )
            for f in fmap.features
        ]  # fmt: skip
        transforms = {f.name: NumericTransform(**f.transform) for f in fmap.features if f.transform}
        self.encoder = RowEncoder(specs, vocabs, transforms)
        self.vocabs = vocabs

    def decode(self, feature: str, indices: np.ndarray) -> list[Any]:
        """The raw ids of a categorical feature's encoded ``indices`` (None: padding or OOV;
        ``"#bucket k"`` for an id hashed into a shared bucket)."""
        spec = self.feature_map.feature(feature)
        if spec.kind != "categorical":
            raise FinedError(f"{feature!r} is not a categorical feature: its ids cannot be decoded")
        vocab = self.vocabs[spec.vocab]
        first = vocab.first
        out: list[Any] = []
        for i in indices.tolist():
            if i >= first:
                out.append(vocab.ids[i - first])
            elif i >= 2:
                out.append(f"#bucket {i - 2}")
            else:
                out.append(None)
        return out

    def encode(self, rows: pa.Table | dict[str, Any]) -> dict[str, np.ndarray]:
        """``{"ids": [B, F_id] int32, "floats": [B, F_float] float32, <sequence>: [B, L]
        int32}`` from raw values (one column per feature, named as the feature; sequences
        as lists, oldest first)."""
        table = rows if isinstance(rows, pa.Table) else pa.table(rows)
        missing = [f.name for f in self.feature_map.features if f.name not in table.column_names]
        if missing:
            raise FinedError(f"raw rows: no column for feature {missing[0]!r}")
        encoded = self.encoder.encode(table.combine_chunks().to_batches()[0])
        n, fmap = table.num_rows, self.feature_map
        ids = [encoded[f.name].to_numpy() for f in fmap.id_features]
        floats = [encoded[f.name].to_numpy() for f in fmap.float_features]
        out = {
            "ids": np.stack(ids, 1).astype(np.int32) if ids else np.zeros((n, 0), np.int32),
            "floats": np.stack(floats, 1).astype(np.float32)
            if floats
            else np.zeros((n, 0), np.float32),
        }
        for f in fmap.sequence_features:
            flat = encoded[f.name].flatten().to_numpy()
            out[f.name] = flat.reshape(n, f.max_len).astype(np.int32)
        return out
