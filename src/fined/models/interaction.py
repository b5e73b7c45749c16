"""Feature-interaction layers of the models beyond DeepFM: cross networks (DCN, DCN-V2),
inner and outer products (PNN), the compressed interaction network (xDeepFM), multi-head
self-attention (AutoInt) and target attention with Dice (DIN).

Every layer works on whole tensors: no Python loop over fields, pairs or positions (only over
the few stacked layers of a network).
"""

from __future__ import annotations

import torch
from torch import nn

from fined.models.layers import MLP, ShortLayerNorm, short_softmax


class CrossNetV1(nn.Module):
    """DCN cross network (Wang et al. 2017): ``x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l``.

    ``[B, D] -> [B, D]``; each layer adds ``2 D`` parameters and raises the polynomial order of
    the interactions by one.
    """

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(layers, dim))
        self.bias = nn.Parameter(torch.zeros(layers, dim))
        nn.init.xavier_normal_(self.weight)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias, strict=True):
            x = x0 * (x @ w).unsqueeze(1) + b + x  # (x . w) is one scalar per row
        return x


class CrossNetV2(nn.Module):
    """DCN-V2 cross network (Wang et al. 2021), full-rank:
    ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``. ``[B, D] -> [B, D]``."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class InnerProduct(nn.Module):
    """IPNN product layer (Qu et al. 2016): ``<e_i, e_j>`` for every field pair ``i < j``.

    ``[B, F, d] -> [B, F(F-1)/2]``: one batched matrix product gives the Gram matrix, whose
    strict upper triangle is read with precomputed flat indices.
    """

    pairs: torch.Tensor  # a buffer: flat indices of the pairs

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("pairs", rows * num_fields + cols, persistent=False)
        self.out_dim = int(rows.numel())

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(fields, fields.transpose(1, 2))  # [B, F, F]
        return gram.flatten(1).index_select(1, self.pairs)


class OuterProduct(nn.Module):
    """OPNN product layer (Qu et al. 2016) with the paper's sum-pooling trick.

    The full layer takes the outer products ``e_i e_j^T`` of all pairs (``F^2 d^2`` values per
    row); the paper reduces it to ``p = f_S f_S^T`` with ``f_S = sum_i e_i``, which is what we
    compute. ``p`` is symmetric, so only its upper triangle (diagonal included) is returned:
    ``[B, F, d] -> [B, d(d+1)/2]``. A linear layer on ``p`` (the next MLP layer) is then
    exactly the paper's ``l_p = W_p (.) p``.
    """

    pairs: torch.Tensor  # a buffer: flat indices of the pairs

    def __init__(self, dim: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(dim, dim)
        self.register_buffer("pairs", rows * dim + cols, persistent=False)
        self.out_dim = int(rows.numel())

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        s = fields.sum(1)  # [B, d]
        outer = s.unsqueeze(2) * s.unsqueeze(1)  # [B, d, d]
        return outer.flatten(1).index_select(1, self.pairs)


class CIN(nn.Module):
    """Compressed interaction network (xDeepFM, Lian et al. 2018).

    Layer k: ``X^k_h = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_i * X^0_j)`` (Hadamard products of every
    hidden map with every field, compressed to ``H_k`` maps), then each map is sum-pooled over
    the embedding axis. With ``split_half`` every layer but the last sends half of its maps to
    the output and half to the next layer. ``[B, m, d] -> [B, out_dim]`` pooled maps.

    Maps are kept as ``[B, d, H]``. The products are never materialized (``[B, d, H_{k-1} m]``
    is hundreds of MB at batch 4096): ``sum_i x_i (sum_j W_ij x0_j)`` contracts the fields first
    (one matmul to ``[B, d, H_k H_{k-1}]``), then the hidden maps (one batched matmul).
    """

    def __init__(self, num_fields: int, layer_sizes: list[int], split_half: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.split_half = split_half
        prev, out_dim = num_fields, 0
        for k, size in enumerate(layer_sizes):
            self.layers.append(nn.Linear(prev * num_fields, size, bias=False))
            last = k == len(layer_sizes) - 1
            prev = size // 2 if split_half and not last else size
            out_dim += prev
        self.out_dim = out_dim

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        x0 = fields.transpose(1, 2)  # [B, d, m]
        b, d, m = x0.shape
        x, pooled = x0, []
        for k, layer in enumerate(self.layers):
            assert isinstance(layer, nn.Linear)
            size, prev = layer.out_features, x.shape[2]
            w = layer.weight.view(size, prev, m)  # W[h, i, j]: hidden map i times field j
            t = x0 @ w.permute(2, 0, 1).reshape(m, size * prev)  # [B, d, H_k * H_{k-1}]
            h = (t.view(b * d, size, prev) @ x.reshape(b * d, prev, 1)).view(b, d, size)
            if self.split_half and k < len(self.layers) - 1:
                x, h = h.chunk(2, dim=2)
            else:
                x = h
            pooled.append(h.sum(1))
        return torch.cat(pooled, 1)


class SelfAttentionLayer(nn.Module):
    """One AutoInt interacting layer (Song et al. 2019): multi-head self-attention over the
    fields, ``softmax(<W_Q e_m, W_K e_k>)`` as in the paper (no ``1/sqrt(d)`` scaling), heads
    concatenated, plus a projected residual, then ReLU (and optionally LayerNorm).

    ``[B, F, in_dim] -> [B, F, attention_dim]``; ``attention_dim`` is split across the heads.
    """

    def __init__(
        self, in_dim: int, attention_dim: int, num_heads: int, residual: bool, layer_norm: bool
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(in_dim, 3 * attention_dim, bias=False)  # W_Q, W_K, W_V in one
        self.residual = nn.Linear(in_dim, attention_dim, bias=False) if residual else None
        self.norm = ShortLayerNorm(attention_dim) if layer_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        # Sizes spelt out, never -1: a batch of zero rows leaves nothing to infer -1 from.
        d_h = self.qkv.out_features // (3 * self.num_heads)
        q, k, v = self.qkv(x).view(b, f, 3, self.num_heads, d_h).permute(2, 0, 3, 1, 4)
        out = short_softmax(q @ k.transpose(-1, -2)) @ v  # [B, h, F, d_h]
        out = out.transpose(1, 2).reshape(b, f, self.num_heads * d_h)
        if self.residual is not None:
            out = out + self.residual(x)
        out = torch.relu(out)
        return self.norm(out) if self.norm is not None else out


class TargetAttention(nn.Module):
    """DIN local activation unit: a weight for each history item given the target,
    ``a(q, k) = MLP([q, k, q - k, q * k])``, and the weighted sum of the history.

    Weights are not normalized (the paper keeps the intensity of the user's interest); with
    ``softmax`` they are. Padding positions get weight 0.
    ``query [B, d], keys [B, L, d], mask [B, L] -> [B, d]``.
    """

    def __init__(self, dim: int, hidden: list[int], act: str, softmax: bool) -> None:
        super().__init__()
        self.score = MLP(4 * dim, hidden, out=1, act=act)
        self.softmax = softmax

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)
        w = self.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # [B, L]
        if self.softmax:
            # A finite fill keeps an all-padding history NaN-free; the mask then zeroes it.
            w = torch.softmax(w.masked_fill(~mask, -1e9), dim=1)
        w = w * mask
        return torch.bmm(w.unsqueeze(1), keys).squeeze(1)
