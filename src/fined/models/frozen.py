"""A frozen snapshot of a module: it follows its owner everywhere and is never trained or saved.

A teacher (the model of t-1 that ``kd`` distils from, a KB's earlier self) must move with the
model that owns it: every ``.to(device)``, ``.cuda()``, ``.half()`` or ``.double()`` of the
owner reaches it through PyTorch's ``_apply``, because it is a registered submodule. It must
also stay out of what the owner trains and saves: each of its parameters becomes a buffer
(so ``parameters()`` and the optimizer never see it) and every buffer is non-persistent (so
``state_dict()`` and the checkpoints do not hold it; a resumed run takes a new snapshot of the
same saved model instead).
"""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)
FROZEN = "is_frozen_snapshot"  # the attribute that marks a snapshot


def frozen_snapshot(module: M) -> M:
    """A deep copy of ``module`` taken now, in evaluation mode, without gradients, whose every
    tensor is a non-persistent buffer (see the module docstring)."""
    snapshot = copy.deepcopy(module).eval().requires_grad_(False)
    for sub in snapshot.modules():
        for name, parameter in list(sub._parameters.items()):
            del sub._parameters[name]
            sub.register_buffer(name, None if parameter is None else parameter.detach(),
                                persistent=False)  # fmt: skip
        sub._non_persistent_buffers_set.update(sub._buffers)
        if isinstance(sub, nn.modules.batchnorm._NormBase):
            # A norm that tracks its running statistics puts its step counter back into any
            # state dict loaded without version metadata (a plain dict, a checkpoint: PyTorch's
            # compatibility path), where the owner does not expect it. The snapshot is never
            # trained, and in evaluation a norm reads its running statistics either way.
            sub.track_running_stats = False
    setattr(snapshot, FROZEN, True)
    return snapshot


def frozen_tensors(module: nn.Module) -> list[str]:
    """The names of the tensors of every frozen snapshot inside ``module``: the same on
    every rank and never trained (DDP need not manage them)."""
    names = [
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        if getattr(sub, FROZEN, False)
        for name, _ in sub.named_buffers()
    ]
    return list(dict.fromkeys(names))  # a snapshot inside a snapshot: once
