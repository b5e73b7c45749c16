"""Global self-attention over the fields: the context the extractor's gates read.

A pre-norm transformer block (``x + MHA(LN(x))``, then ``x + FFN(LN(x))``) written out
rather than ``nn.TransformerEncoderLayer``: the KB is queried for every instance the base
model scores, and at a dozen fields of 16 dimensions the fused PyTorch layer spends most of
its time in a softmax kernel made for long rows (4.7 against 1.8 us a row for 4096 rows on
2 cores, same outputs). No dropout: the KB's regularizers are the bottleneck and L0 terms.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fined.models.layers import ShortLayerNorm, normalized_linear, short_softmax, short_softmax_


class FieldAttentionBlock(nn.Module):
    """``[B, F, d] -> [B, F, d]``: multi-head self-attention over all fields, then an FFN."""

    ffn: nn.Sequential  # Linear, ReLU, Linear

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.attention_norm = ShortLayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = ShortLayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, d = x.shape
        # d // heads, never -1: a batch of zero rows leaves nothing to infer -1 from.
        qkv = self.qkv(self.attention_norm(x)).view(b, f, 3, self.heads, d // self.heads)
        q, k, v = qkv.unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, h, F, d_h]
        if x.is_cuda:  # PyTorch's fused attention kernel (the same function)
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            attended = short_softmax(q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))) @ v
        x = x + self.out(attended.transpose(1, 2).reshape(b, f, d))
        return x + self.ffn(self.ffn_norm(x))

    @torch.no_grad()
    def forward_frozen_(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x)`` for inference, on a ``[B, F, d]`` tensor the caller owns (overwritten):
        heads read as strided views of the fused q/k/v product (no transposes), their scores
        in one buffer for a single in-place softmax, each head projected straight into the
        residual stream, the score scale folded into the query rows, the layer norms folded
        into the products that follow them."""
        b, f, d = x.shape
        heads, width = self.heads, d // self.heads
        flat = x.view(-1, d)
        scale = x.new_ones(3 * d, 1)
        scale[:d] = 1.0 / math.sqrt(width)
        weight, bias = self.qkv.weight * scale, self.qkv.bias * scale.squeeze(1)
        qkv = normalized_linear(self.attention_norm, weight, bias, flat).view(b, f, 3 * d)
        scores = x.new_empty(heads, b, f, f)
        for h in range(heads):
            q = qkv[:, :, h * width : (h + 1) * width]
            k = qkv[:, :, d + h * width : d + (h + 1) * width]
            torch.bmm(q, k.transpose(1, 2), out=scores[h])
        short_softmax_(scores)
        for h in range(heads):
            v = qkv[:, :, 2 * d + h * width : 2 * d + (h + 1) * width]
            head_out = self.out.weight[:, h * width : (h + 1) * width]
            flat.addmm_(torch.bmm(scores[h], v).view(-1, width), head_out.t())
        flat.add_(self.out.bias)
        up, down = self.ffn[0], self.ffn[2]  # the FFN built above: Linear, ReLU, Linear
        assert isinstance(up, nn.Linear) and isinstance(down, nn.Linear)
        hidden = normalized_linear(self.ffn_norm, up.weight, up.bias, flat).relu_()
        flat.addmm_(hidden, down.weight.t()).add_(down.bias)
        return x


class FieldAttention(nn.Sequential):
    """``layers`` blocks in sequence."""

    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__(*(FieldAttentionBlock(dim, heads, 2 * dim) for _ in range(layers)))

    def forward_frozen_(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x)`` for inference, overwriting ``x`` (see the block's)."""
        for block in self:
            assert isinstance(block, FieldAttentionBlock)
            x = block.forward_frozen_(x)
        return x
