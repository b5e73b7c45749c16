"""Batches on the model's device, fed without waiting on copies.

On the CPU the batches are slices of the rows as they are. On a GPU the rows are made
resident in GPU memory when they fit in ``resident_share`` of what is free (one copy; then
every shuffled batch is an index-select on the device, with no copy per step); otherwise
each batch is gathered on the host into page-locked memory and copied with ``non_blocking``
on a side stream while the GPU still works on the previous one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fined.data.batch import Batch
from fined.data.loader import BatchLoader
from fined.devices import free_memory


class DeviceFeed:
    def __init__(
        self,
        data: Batch,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        seed: int = 0,
        resident_share: float = 0.5,
    ) -> None:
        self.device, self.batch_size = device, batch_size
        on_gpu = device.type == "cuda"
        self.resident = not on_gpu or data.nbytes <= resident_share * free_memory(device)
        if on_gpu and self.resident:
            data = data.to(device)
        self.loader = BatchLoader(data, batch_size, shuffle=shuffle, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        if self.resident:
            yield from self.loader
            return
        side = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        pending: Batch | None = None
        for host in self.loader:
            pinned = host.pin()
            with torch.cuda.stream(side):  # the copy overlaps the work queued on the GPU
                coming = pinned.to(self.device)
            if pending is not None:
                yield pending
            main.wait_stream(side)
            for t in coming.tensors():  # allocated on the side stream, used on the main one
                t.record_stream(main)
            pending = coming
        if pending is not None:
            yield pending
