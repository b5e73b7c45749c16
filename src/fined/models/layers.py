"""Building blocks shared by the models: activations (Dice included), MLP, the FM, and
softmaxes for short rows."""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}
ACTIVATION_NAMES = (*_ACTIVATIONS, "dice")


def check_activation(name: str) -> str:
    """A config validator: the name, or a ValueError listing the known ones."""
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATION_NAMES)}")
    return name


def activation(name: str, dim: int) -> nn.Module:
    """An activation by name; ``dice`` (DIN's data-adaptive activation) needs the width."""
    check_activation(name)
    return Dice(dim) if name == "dice" else _ACTIVATIONS[name]()


class _ShortSoftmax(torch.autograd.Function):
    """Softmax over the last axis in three elementwise passes, keeping only its output for
    the backward pass (``dx = y * (dy - sum(dy * y))``), as PyTorch's own kernel does: written
    out with autograd ops it would keep three tensors of the scores' size and differentiate
    through each (4096 x 2 x 12 x 12 scores, forward + backward: 3.0 against 5.4 ms)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        e = (scores - scores.amax(-1, keepdim=True)).exp_()
        out = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return out * (grad - (grad * out).sum(-1, keepdim=True))


# PyTorch's CPU softmax kernel vectorizes along rows of at least 16 entries; below that it
# is ~5x slower than three elementwise passes (rows of 12: 7.3 against 1.4 ms for 98,304
# rows; rows of 16: 0.52 against 1.16 ms, 2 cores).
_SHORT_ROW = 16


def _kernel_is_faster(scores: torch.Tensor) -> bool:
    return scores.shape[-1] >= _SHORT_ROW or scores.device.type != "cpu"


def short_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, fast for the short rows of attention over a dozen fields
    or knowledge slots on CPU (same result to 1e-6); longer rows, and other devices, go to
    PyTorch's kernel."""
    if _kernel_is_faster(scores):
        return torch.softmax(scores, -1)
    if not (torch.is_grad_enabled() and scores.requires_grad):  # inference: the same passes,
        e = (scores - scores.amax(-1, keepdim=True)).exp_()  # as plain ops (exportable)
        return e.div_(e.sum(-1, keepdim=True))
    return _ShortSoftmax.apply(scores)


# exp of a float32 in [-80, 80] neither overflows nor underflows to zero.
_SAFE_EXPONENT = 80.0


def short_softmax_(scores: torch.Tensor) -> torch.Tensor:
    """``short_softmax`` in place, for inference. Shifting each row by its maximum only guards
    ``exp`` against overflow: when one pass shows every float32 score within +-80, the shift
    (a row-wise reduction over a dozen entries, slow on CPU, and a subtraction) is skipped."""
    if _kernel_is_faster(scores):
        return scores.copy_(torch.softmax(scores, -1))
    if not _exp_is_safe(scores):
        scores.sub_(scores.amax(-1, keepdim=True))
    scores.exp_()
    return scores.div_(scores.sum(-1, keepdim=True))


def _exp_is_safe(scores: torch.Tensor) -> bool:
    if scores.dtype != torch.float32 or not scores.numel():
        return False
    low, high = torch.aminmax(scores)
    return bool(low >= -_SAFE_EXPONENT) and bool(high <= _SAFE_EXPONENT)


class ShortLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over a short last axis (a field's or a pattern's dozen-odd values),
    with the same parameters and state dict. Off the CPU it is computed by one reduction and
    elementwise ops (``short_layer_norm``): PyTorch's kernel gives each row a thread block,
    which for rows of 16 leaves a GPU mostly idle (3.9 ms for the 2.6 M rows of a 65,536-row
    FINED batch on an H200, a third of the whole step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":  # PyTorch's kernel is the faster one there
            return super().forward(x)
        return short_layer_norm(x, self.weight, self.bias, self.eps)


def short_layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``F.layer_norm`` over the last axis, in fp32 at least (as autocast computes it), by
    ``var_mean`` and elementwise ops; the result in ``x``'s dtype."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    var, mean = torch.var_mean(wide, -1, correction=0, keepdim=True)
    out = (wide - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.to(x.dtype)


def normalized_linear(
    norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor | None, flat: torch.Tensor
) -> torch.Tensor:
    """``F.linear(norm(flat), weight, bias)`` for ``[N, d]`` rows, for inference: the norm's
    affine folded into the product and its statistics taken by products (a row-wise
    reduction over 16 entries is slow on CPU; so is PyTorch's layer-norm kernel at that
    width: 0.53 against 0.29 ms for 49,152 rows)."""
    d = flat.shape[-1]
    mean_of = flat.new_full((d, 1), 1.0 / d)
    centered = flat - torch.mm(flat, mean_of)
    inv_std = torch.mm(centered.square(), mean_of).add_(norm.eps).rsqrt_()
    folded_bias = weight @ norm.bias if bias is None else bias + weight @ norm.bias
    return torch.addmm(folded_bias, centered.mul_(inv_std), (weight * norm.weight).t())


class MLP(nn.Module):
    """``[B, in] -> [B, hidden[-1]]`` (or ``[B, out]`` with ``out``): Linear, [BatchNorm],
    activation, [Dropout] per hidden layer."""

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        out: int | None = None,
        act: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out is not None:
            layers.append(nn.Linear(in_dim, out))
            in_dim = out
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def first(self) -> nn.Linear:
        """The first linear layer (a fused caller computes it its own way)."""
        layer = self.net[0]
        assert isinstance(layer, nn.Linear)
        return layer

    def after_first(self, x: torch.Tensor) -> torch.Tensor:
        """The layers after the first linear one, applied to its output."""
        return self.net[1:](x)

    def after_first_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The layers after the first linear one and its activation (a plain ``relu``, with
        neither batch norm nor dropout: callers that fuse that activation check it)."""
        if not isinstance(self.net[1], nn.ReLU):
            raise ValueError("the first hidden layer is not a plain ReLU layer")
        return self.net[2:](x)


class Dice(nn.Module):
    """Dice activation (DIN, Zhou et al. 2018): ``p(s) * s + (1 - p(s)) * alpha * s`` with
    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``.

    BN-based, as in the paper: ``E``/``Var`` are the mini-batch statistics in training and
    their moving averages at inference (an affine-free BatchNorm), so predictions of a trained
    model do not depend on the batch. ``alpha`` is learned per unit. Input ``[..., dim]``.
    """

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.dim = dim  # a plain int: the width stays static in exported graphs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            p = torch.sigmoid(self.norm(x.reshape(-1, self.dim))).view_as(x)
        else:  # the moving averages, written out (exportable: no batch-norm operator)
            mean, var = self.norm.running_mean, self.norm.running_var
            assert mean is not None and var is not None  # tracked: track_running_stats
            p = torch.sigmoid((x - mean) * torch.rsqrt(var + self.norm.eps))
        return x * (self.alpha + (1.0 - self.alpha) * p)


class FactorizationMachine(nn.Module):
    """Second-order FM term over fields ``[B, F, d] -> [B]``:
    ``0.5 * sum_k ((sum_i e_ik)^2 - sum_i e_ik^2)`` (Rendle 2010)."""

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        square_of_sum = fields.sum(1).pow(2)
        sum_of_square = fields.pow(2).sum(1)
        return 0.5 * (square_of_sum - sum_of_square).sum(1)
