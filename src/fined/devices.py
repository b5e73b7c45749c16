"""The one device decision: where a command's model and batches live.

``--device auto|cpu|cuda|cuda:N`` (``device:`` in run configs) is resolved here, once, and
handed to the trainer (which moves the model and every batch), the KB builder, ``predict``
and the protocol; nothing else calls ``.cuda()``. ``auto`` is CUDA when PyTorch sees a GPU
(under torchrun: the rank's own, ``LOCAL_RANK``), else the CPU. Asking for CUDA where there is
none is a user error, said in one line.
"""

from __future__ import annotations

import os
import platform

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


def bf16_dot_products(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a GPU with bf16 units
    (Ampere or later), a CPU with AVX-512 BF16 or AMX (x86) or the BF16 extension (Arm).
    Elsewhere PyTorch emulates bf16 products, slower than fp32 ones."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:  # PyTorch's own CPU feature checks (private names, hence the guard)
        if platform.machine().lower() in ("arm64", "aarch64"):
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(spec: str, device: torch.device) -> tuple[str, str]:
    """``(precision, why)``: ``train.precision`` as a fit runs it. ``auto`` is bf16 autocast
    where the device has bf16 dot products (``bf16_dot_products``), fp32 elsewhere."""
    if spec != "auto":
        return spec, "as set"
    if bf16_dot_products(device):
        return "bf16", f"auto: this {device.type.upper()} has bf16 dot products"
    return "fp32", f"auto: this {device.type.upper()} has no bf16 dot products"
