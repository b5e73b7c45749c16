"""Reading encoded periods into contiguous tensors, and slicing batches from them.

A period is read once (only the columns asked for) into a ``Batch`` of contiguous tensors;
training batches are then index-selects on those tensors with a per-epoch permutation. No
per-row Python anywhere.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.errors import FinedError
from fined.io import describe_os_error

Part = Literal["train", "holdout", "all"]


def footer_digest(fh: BinaryIO) -> str:
    """sha256 of an open Parquet file's footer (schema, row groups, column offsets,
    statistics) and of its size: a cheap content check that any rewrite of the file changes.
    Leaves the file positioned at its start."""
    size = fh.seek(0, os.SEEK_END)
    if size < 12:
        raise ValueError("too short for a Parquet file")
    fh.seek(size - 8)
    tail = fh.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length > size - 12:
        raise ValueError("no Parquet footer (truncated or overwritten?)")
    fh.seek(size - 8 - length)
    footer = fh.read(length)
    fh.seek(0)
    return hashlib.sha256(footer + size.to_bytes(8, "little")).hexdigest()


class PeriodStore:
    """A prepared dataset directory: its feature map and its encoded periods.

    ``shard=(rank, world)``: every read returns only this rank's share of the rows asked for
    (a contiguous 1/world of each period's train or held-out rows, disjoint across ranks), and
    only the Parquet row groups that hold them are read. ``reads`` logs what was read.
    """

    def __init__(self, directory: str | Path, shard: tuple[int, int] | None = None) -> None:
        self.directory = Path(directory)
        self.feature_map = FeatureMap.load(self.directory)
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise FinedError(f"bad shard {shard}: expected (rank, world) with 0 <= rank < world")
        self.shard = shard
        self.reads: list[dict] = []

    def load(
        self,
        periods: Sequence[int | str],
        part: Part = "all",
        known_through: int | None = None,
    ) -> Batch:
        """Rows of the given periods (in period order) as one ``Batch``.

        ``known_through``: ids that entered the vocabulary after this period index are mapped
        to OOV, as they would be for a model trained only up to that period.
        """
        fmap = self.feature_map
        index = sorted({fmap.period_index(p) for p in periods})
        if not index:
            raise FinedError("no period selected")
        parts = [self._read(i, part) for i in index]
        batch = Batch.concat(parts)
        if known_through is not None:
            ids, sequences = fmap.known_limits(fmap.period_index(known_through))
            batch = batch.forget_later_ids(torch.tensor(ids, dtype=torch.long), sequences)
        return batch

    def _read(self, i: int, part: Part) -> Batch:
        fmap = self.feature_map
        info = fmap.periods[i]
        path = self.directory / info.file
        if not path.resolve().is_relative_to(self.directory.resolve()):
            raise FinedError(
                f"{path}: lies outside {self.directory} (a link?); refusing to read it"
            )
        try:
            # One open file for the check and the read: a file swapped in between (the dataset
            # prepared again while we read it) cannot pass the check with the old footer.
            with open(path, "rb") as fh:
                if footer_digest(fh) != info.footer_sha256:
                    raise FinedError(
                        f"{path}: changed since {self.directory / 'feature_map.json'} was "
                        "written (prepared again, or edited, while in use?); prepare it again"
                    )
                table = self._read_table(fh, i, part)
        except FileNotFoundError:
            raise FinedError(f"{path}: missing period file (re-run `fined data prepare`)") from None
        except (OSError, pa.ArrowException, ValueError) as err:
            why = describe_os_error(err) if isinstance(err, OSError) else str(err)
            raise FinedError(f"{path}: unreadable period file ({why})") from None
        n = table.num_rows
        id_cols = [_numpy(table, f.name) for f in fmap.id_features]
        float_cols = [_numpy(table, f.name) for f in fmap.float_features]
        ids = np.stack(id_cols, axis=1) if id_cols else np.zeros((n, 0), np.int32)
        floats = np.stack(float_cols, axis=1) if float_cols else np.zeros((n, 0), np.float32)
        seqs = {}
        for f in fmap.sequence_features:
            flat = pc.list_flatten(table.column(f.name)).to_numpy()
            seqs[f.name] = torch.from_numpy(flat.reshape(n, f.max_len).astype(np.int32))
        group = None
        if fmap.user_key:
            group = torch.from_numpy(_numpy(table, fmap.user_key).astype(np.int64))
        return Batch(
            ids=torch.from_numpy(ids.astype(np.int32)),
            floats=torch.from_numpy(floats.astype(np.float32)),
            sequences=seqs,
            label=torch.from_numpy(_numpy(table, "label").astype(np.float32)),
            time=torch.from_numpy(_numpy(table, "time").astype(np.int64)),
            group=group,
        )

    def _read_table(self, fh: BinaryIO, i: int, part: Part) -> pa.Table:
        if self.shard is not None:
            return self._read_share(i, fh, part)
        table = pq.read_table(fh)
        if part != "all":
            mask = table.column("holdout")
            table = table.filter(mask if part == "holdout" else pc.invert(mask))
        return table

    def _read_share(self, i: int, fh: BinaryIO, part: Part) -> pa.Table:
        """This rank's contiguous share of the period's ``part`` rows, from the row groups
        that hold it (the one-byte ``holdout`` column is read whole to find them)."""
        assert self.shard is not None
        rank, world = self.shard
        file = pq.ParquetFile(fh)
        if part == "all":
            rows = np.arange(file.metadata.num_rows)
        else:
            held = file.read(columns=["holdout"]).column("holdout").to_numpy(zero_copy_only=False)
            rows = np.flatnonzero(held if part == "holdout" else ~held)
        mine = np.array_split(rows, world)[rank]
        self.reads.append(
            {"period": i, "part": part, "rows": len(mine),
             "first": int(mine[0]) if len(mine) else -1, "last": int(mine[-1]) if len(mine) else -1}
        )  # fmt: skip
        if len(mine) == 0:
            return file.schema_arrow.empty_table()
        sizes = [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        groups = [g for g in range(len(sizes)) if starts[g] <= mine[-1] and starts[g + 1] > mine[0]]
        table = file.read_row_groups(groups)
        return table.take(pa.array(mine - starts[groups[0]]))


def _numpy(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


class BatchLoader:
    """Iterates over a ``Batch`` in mini-batches; a fresh permutation per epoch when shuffling
    (seeded by ``seed + epoch``, so every process and every resumed run sees the same order)."""

    def __init__(
        self,
        data: Batch,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise FinedError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n, bs = len(self.data), self.batch_size
        order = None
        if self.shuffle:  # drawn on the CPU (the same order everywhere), used where the rows are
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).to(self.data.device)
        for i in range(len(self)):
            lo, hi = i * bs, min(n, (i + 1) * bs)
            yield self.data.slice(lo, hi) if order is None else self.data.take(order[lo:hi])
