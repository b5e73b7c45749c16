"""Warm starts across a change of inputs: a base model gaining knowledge tokens."""

from __future__ import annotations

import torch
from torch import nn


def load_overlapping(module: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Warm-start ``module`` from a model with fewer inputs (a base model gaining knowledge
    tokens): equal shapes are copied; a larger tensor gets the old one in its leading block
    and zeros elsewhere, so the new inputs (the tokens) start with no effect; the rest keeps
    its initialization. Returns how many tensors were copied whole or in part."""
    copied = 0
    own = module.state_dict()
    with torch.no_grad():
        for name, target in own.items():
            source = state.get(name)
            if source is None or source.dim() != target.dim():
                continue
            if source.shape == target.shape:
                target.copy_(source)
            elif all(s <= t for s, t in zip(source.shape, target.shape, strict=True)):
                target.zero_()
                target[tuple(slice(0, s) for s in source.shape)].copy_(source)
            else:
                continue
            copied += 1
    return copied
