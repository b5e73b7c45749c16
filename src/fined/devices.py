"""The one device decision: where a command's model and batches live.

``--device auto|cpu|cuda|cuda:N`` (``device:`` in run configs) is resolved here, once, and
handed to the trainer (which moves the model and every batch), the KB builder, ``predict``
and the protocol; nothing else calls ``.cuda()``. ``auto`` is CUDA when PyTorch sees a GPU
(under torchrun: the rank's own, ``LOCAL_RANK``), else the CPU. Asking for CUDA where there is
none is a user error, said in one line.
"""

from __future__ import annotations

import os

import torch

from fined.errors import FinedError


def resolve_device(spec: str = "auto", where: str = "--device") -> torch.device:
    """The device ``spec`` names; ``auto``: this rank's GPU if there is one, else the CPU.
    ``where``: what set it, as a refusal says it (``--device``, or a config's ``device:``)."""
    spec = spec.strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "a CPU build of PyTorch" if torch.version.cuda is None else "no GPU visible"
            raise FinedError(f"{where} {spec}: CUDA is not available here ({build}); use cpu")
        if spec == "cuda":
            return torch.device("cuda", _local_rank() % torch.cuda.device_count())
        index = spec.removeprefix("cuda:")
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise FinedError(
                f"{where} {spec}: no such GPU (this machine has {torch.cuda.device_count()})"
            )
        return torch.device("cuda", int(index))
    raise FinedError(f"{where} {spec!r}: expected auto, cpu, cuda or cuda:N")


def free_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device (0 for the CPU: host memory is not budgeted here)."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def _local_rank() -> int:
    """This process's rank on its machine under torchrun (0 otherwise): one GPU per rank."""
    return int(os.environ.get("LOCAL_RANK", "0"))
