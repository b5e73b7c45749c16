"""Optimizers: Adam/AdamW, and the same with sparse embedding gradients.

With ``sparse_embedding: true`` a model's embedding tables produce sparse gradients (only the
rows a batch looked up), which dense Adam cannot take. ``DenseSparseAdam`` then runs two
PyTorch optimizers as one: Adam(W) for the dense parameters and ``torch.optim.SparseAdam`` for
the tables, which updates only the rows looked up (lazy Adam: a row's moments move only when
it is seen). It exposes the union of their parameter groups, so one learning-rate schedule
drives both, and one state dict checkpoints both. Weight decay applies to the dense part only
(``embedding_l2`` regularizes the looked-up rows).

``AuxiliaryOptimizers``: one Adam for each group of parameters a model trains apart
(``Trainable.auxiliary_groups``), stepped by the trainer on the group's own loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fined import distributed
from fined.models.trainable import AuxiliaryGroup, Forward


def sparse_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters whose gradients are sparse (tables of sparse embeddings)."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}


class DenseSparseAdam(torch.optim.Optimizer):
    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.SparseAdam) -> None:
        # Optimizer.__init__ is not called on purpose: the two parts own the parameter groups
        # and the state; this object only presents them as one.
        self.parts = {"dense": dense, "sparse": sparse}
        self.defaults = dense.defaults
        self.param_groups = dense.param_groups + sparse.param_groups
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {**self.parts["dense"].state, **self.parts["sparse"].state}

    def step(self, closure=None):  # noqa: ANN001
        for part in self.parts.values():
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])


class AuxiliaryOptimizers:
    """An Adam for each auxiliary group of a model, by the group's name: one step a training
    step on the group's own loss, its gradients averaged over the ranks first (DDP does not
    manage these parameters: ``parameters()``), checkpointed by name."""

    def __init__(self, groups: list[AuxiliaryGroup[Any]]) -> None:
        self.groups = groups
        self.optimizers = {g.name: torch.optim.Adam(g.params, lr=g.lr) for g in groups}
        if len(self.optimizers) != len(groups):
            raise ValueError(f"auxiliary groups share a name: {[g.name for g in groups]}")

    def __bool__(self) -> bool:
        return bool(self.groups)

    def parameters(self) -> list[nn.Parameter]:
        return [p for g in self.groups for p in g.params]

    def step(self, out: Forward) -> None:
        """One step of each group on its loss of this training pass ``out``."""
        for group in self.groups:
            optimizer = self.optimizers[group.name]
            optimizer.zero_grad(set_to_none=True)
            group.loss(out).backward()
            distributed.average_gradients(group.params)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """A checkpoint's optimizers, one for each group. One saved for a group not declared
        now must be empty: an optimizer that never stepped (a KB with the CLUB estimator but
        ``lambda_dis`` 0 saved one before its group was declared only where it trains)."""
        saved = {k: v for k, v in saved.items() if k in self.optimizers or v["state"]}
        if set(saved) != set(self.optimizers):
            raise KeyError(f"optimizers {sorted(saved)}, expected {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved[name])


def build_optimizer(
    params: list, kind: str, lr: float, weight_decay: float, sparse: set[int]
) -> torch.optim.Optimizer:
    """``params``: parameters or parameter groups (as ``Trainable.parameter_groups()`` gives)."""
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    groups = params if params and isinstance(params[0], dict) else [{"params": list(params)}]
    dense_groups, sparse_groups = [], []
    for g in groups:
        rest = {k: v for k, v in g.items() if k != "params"}
        own = list(g["params"])
        dense = [p for p in own if id(p) not in sparse]
        table = [p for p in own if id(p) in sparse]
        if dense:
            dense_groups.append({**rest, "params": dense})
        if table:
            sparse_groups.append({k: v for k, v in rest.items() if k == "lr"} | {"params": table})
    main = cls(dense_groups, lr=lr, weight_decay=weight_decay, fused=fusable(dense_groups))
    if not sparse_groups:
        return main
    return DenseSparseAdam(main, torch.optim.SparseAdam(sparse_groups, lr=lr))


FUSED_DEVICES = ("cpu", "cuda")


def fusable(groups: list[dict]) -> bool:
    """Whether PyTorch's fused Adam can step these groups: one kernel over all parameters
    instead of a dozen per tensor (on 2 CPU cores, DeepFM's step of 4.7 M parameters takes
    3 ms instead of 21; on a GPU, a handful of launches instead of hundreds). Floating-point
    dense parameters on one device it supports; else PyTorch's default implementation."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in FUSED_DEVICES
        and all(p.is_floating_point() for p in params)
    )


def clip_gradients(params, max_norm: float) -> None:
    """``clip_grad_norm_`` that also takes sparse gradients (their rows count once each)."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # repeated rows summed, as the dense gradient would be
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
