"""Several processes, one model: PyTorch's own distributed engine, nothing home-made.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``setup()`` joins the process group
(``nccl`` when the command trains on GPUs, one per rank; ``gloo`` on CPU). Each rank then
reads its own disjoint share of every period (``PeriodStore(shard=...)``), trains a
``DistributedDataParallel`` copy of the model on it with the same per-epoch shuffle seed,
and scores validation rows on its share; predictions are gathered so that every rank
computes the same metrics, the early-stopping decision is taken on rank 0 and broadcast, and
only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank, self.world) if self.active else None


def launched() -> bool:
    """Whether this process was started by torchrun as one of several workers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_COLLECTIVES = torch.device("cpu")  # where the ranks' collective tensors live (nccl: the GPU)


def setup(device: torch.device | None = None, timeout_s: float = 600.0) -> Context:
    """Join the process group if torchrun started us (idempotent); else a 1-process context.
    The backend follows the device the command trains on: ``nccl`` for a GPU (each rank its
    own, ``LOCAL_RANK``), ``gloo`` for the CPU."""
    global _COLLECTIVES
    if launched() and not dist.is_initialized():
        gpu = device if device is not None and device.type == "cuda" else None
        if gpu is not None:
            torch.cuda.set_device(gpu)
            _COLLECTIVES = gpu
        backend = "gloo" if gpu is None else "nccl"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return context()


_SPARSE_GROUP: Any = None


def sparse_group() -> Any:
    """The process group for a model with sparse gradients: NCCL has no sparse all-reduce
    (pytorch/pytorch#22400), gloo has one for CUDA tensors too, so under ``nccl`` such a
    model's DDP talks through a gloo group of the same ranks (made once); else the default."""
    global _SPARSE_GROUP
    if dist.get_backend() != "nccl":
        return None
    if _SPARSE_GROUP is None:
        _SPARSE_GROUP = dist.new_group(backend="gloo")
    return _SPARSE_GROUP


def context() -> Context:
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    return Context()


def teardown() -> None:
    """Leave the group together: a rank that tears down while another still talks aborts."""
    global _SPARSE_GROUP, _COLLECTIVES
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _SPARSE_GROUP, _COLLECTIVES = None, torch.device("cpu")


def barrier() -> None:
    if context().active:
        dist.barrier()


def min_int(value: int) -> int:
    """The smallest ``value`` over all ranks (e.g. steps per epoch: every rank takes as many)."""
    if not context().active:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_COLLECTIVES)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Rank-ordered concatenation of every rank's 1-D ``tensor`` (lengths may differ)."""
    if not context().active:
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.numel()], dtype=torch.long, device=_COLLECTIVES)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=tensor.dtype, device=_COLLECTIVES)
    padded[: tensor.numel()] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    whole = torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
    return whole.to(tensor.device)


def broadcast_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Rank 0's metrics on every rank, so that every decision taken on them (early stopping,
    the learning-rate schedule) is rank 0's, whatever the float rounding elsewhere."""
    if not context().active:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=_COLLECTIVES)
    dist.broadcast(values, src=0)
    return dict(zip(keys, values.tolist(), strict=True))


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients DDP does not manage (e.g. the CLUB estimator's own network)."""
    ctx = context()
    if not ctx.active:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ctx.world


def record_rank(directory: Path, reads: list[dict[str, Any]]) -> None:
    """``DIRECTORY/ranks/rank{r}.json``: this worker's pid and the rows it read (one file per
    rank, for tools and tests that check the shares are disjoint, or need to stop one rank);
    nothing with a single process."""
    from fined.io import atomic_write_json

    ctx = context()
    if ctx.active:
        info = {"rank": ctx.rank, "world": ctx.world, "pid": os.getpid(), "reads": reads}
        atomic_write_json(directory / "ranks" / f"rank{ctx.rank}.json", info)
