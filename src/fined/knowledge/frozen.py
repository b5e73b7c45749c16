"""The frozen knowledge base's query, written for speed.

A FINED model queries its knowledge base for every instance it scores, so the frozen query
is on the serving path. It computes the same function as the training modules in evaluation
mode (deterministic gates, ``v = mu``; ``tests/test_knowledge_parts.py`` checks equality),
without autograd and mostly in place, because at a dozen fields of 16 dimensions the time
goes to passes over memory rather than to arithmetic:

- attention heads are read as strided views of the fused q/k/v product (no head transposes),
  their scores share one buffer for a single in-place softmax, and each head's output is
  projected straight into the residual stream (no concatenation); the softmax skips the
  shift by the row maximum when no score can overflow (``short_softmax_``);
- each layer norm is folded into the product that follows it (its affine into the weights,
  its statistics taken by products);
- the gate's fixed parts (the (field, slot) prior, the shift scale, the bias) are folded
  into one ``[F, K]`` offset, and the gate is finished in place;
- the encoder writes the pooled mean and second-order term into one buffer for its first
  product, and adds the slot's share of that layer as a ``[K, h]`` bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fined.knowledge.attention import FieldAttentionBlock
from fined.knowledge.encoder import KnowledgeEncoder
from fined.knowledge.extractor import SHIFT_SCALE, KnowledgeExtractor
from fined.knowledge.gates import HardConcreteGate
from fined.models.layers import short_softmax_


def _normalized_linear(
    norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor | None, flat: torch.Tensor
) -> torch.Tensor:
    """``F.linear(norm(flat), weight, bias)`` for ``[N, d]`` rows, with the norm's affine
    folded into the product and its statistics taken by products (a row-wise reduction over
    16 entries is slow on CPU; so is PyTorch's layer-norm kernel at that width)."""
    d = flat.shape[-1]
    mean_of = flat.new_full((d, 1), 1.0 / d)
    centered = flat - torch.mm(flat, mean_of)
    inv_std = torch.mm(centered.square(), mean_of).add_(norm.eps).rsqrt_()
    folded_bias = weight @ norm.bias if bias is None else bias + weight @ norm.bias
    return torch.addmm(folded_bias, centered.mul_(inv_std), (weight * norm.weight).t())


@torch.no_grad()
def attention_block_(block: FieldAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for a ``[B, F, d]`` tensor the caller owns: it is overwritten."""
    b, f, d = x.shape
    heads, width = block.heads, d // block.heads
    flat = x.view(-1, d)
    # The score scale 1/sqrt(width) folded into the query's rows of the fused product.
    scale = x.new_ones(3 * d, 1)
    scale[:d] = 1.0 / math.sqrt(width)
    weight, bias = block.qkv.weight * scale, block.qkv.bias * scale.squeeze(1)
    qkv = _normalized_linear(block.attention_norm, weight, bias, flat).view(b, f, 3 * d)
    scores = x.new_empty(heads, b, f, f)
    for h in range(heads):
        q = qkv[:, :, h * width : (h + 1) * width]
        k = qkv[:, :, d + h * width : d + (h + 1) * width]
        torch.bmm(q, k.transpose(1, 2), out=scores[h])
    short_softmax_(scores)
    for h in range(heads):
        v = qkv[:, :, 2 * d + h * width : 2 * d + (h + 1) * width]
        head_out = block.out.weight[:, h * width : (h + 1) * width]
        flat.addmm_(torch.bmm(scores[h], v).view(-1, width), head_out.t())
    flat.add_(block.out.bias)
    up, down = block.ffn[0], block.ffn[2]
    hidden = _normalized_linear(block.ffn_norm, up.weight, up.bias, flat).relu_()
    flat.addmm_(hidden, down.weight.t()).add_(down.bias)
    return x


@torch.no_grad()
def gates(extractor: KnowledgeExtractor, fields: torch.Tensor) -> torch.Tensor:
    """The evaluation gates ``z [B, F, K]`` for field embeddings ``[B, F, d]``."""
    b, f, d = fields.shape
    if extractor.dense_gates:
        return fields.new_ones(b, f, extractor.pattern_prior.shape[-1])
    x = fields + extractor.field_type
    for block in extractor.attention:
        x = attention_block_(block, x)
    weight = SHIFT_SCALE * extractor.gate_logits.weight
    shifts = _normalized_linear(extractor.context_norm, weight, None, x.view(-1, d))
    log_alpha = shifts.view(b, f, -1).add_(extractor.gate_offset())
    gate: HardConcreteGate = extractor.gate
    return log_alpha.sigmoid_().mul_(gate.zeta - gate.gamma).add_(gate.gamma).clamp_(0.0, 1.0)


@torch.no_grad()
def knowledge_means(
    encoder: KnowledgeEncoder, fields: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """``mu [B, K, d]`` of each pattern ``z [B, F, K]`` over ``fields [B, F, d]``."""
    b, _, d = fields.shape
    zt = z.transpose(1, 2)
    slots = zt.shape[1]
    first = encoder.body.net[0]
    pooled = fields.new_empty(b, slots, 2 * d)
    summed = torch.bmm(zt, fields)
    torch.div(summed, zt.sum(-1, keepdim=True).clamp_min_(1e-6), out=pooled[..., :d])
    squares = torch.bmm(zt.square(), fields.square()).mul_(-0.5)
    torch.addcmul(squares, summed, summed, value=0.5, out=pooled[..., d:])
    hidden = torch.mm(pooled.view(-1, 2 * d), first.weight[:, : 2 * d].t())
    hidden.view(b, slots, -1).add_(encoder.slot_bias()).relu_()
    for layer in encoder.body.net[2:]:  # deeper hidden layers, if any, as built
        hidden = layer(hidden)
    return torch.addmm(encoder.mu.bias, hidden, encoder.mu.weight.t()).view(b, slots, d)
