"""The regularizers that keep the knowledge *essential* and *disentangled*.

- ``gaussian_kl``: KL(N(mu, sigma^2) || N(0, I)), the variational upper bound on I(X; V)
  of the information bottleneck (Alemi et al. 2017).
- Mutual-information estimators between two sets of vectors, pluggable:
  ``CLUB`` (Cheng et al., ICML 2020): a sampled contrastive log-ratio upper bound whose
  variational q(y | x) is a Gaussian network trained on detached inputs, in alternation;
  ``HSIC`` (Gretton et al. 2005): the Hilbert-Schmidt independence criterion with Gaussian
  kernels (median bandwidth) on a row subsample; a dependence measure, zero iff independent,
  not in nats.
- ``SlotMI``: the average estimate over sampled pairs of different knowledge slots.
"""

from __future__ import annotations

import torch
from torch import nn


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis: ``[..., d] -> [...]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(-1)


class MIEstimator(nn.Module):
    """``forward(x, y, cond)`` estimates I(X; Y) from paired rows ``x [..., N, dx], y [...,
    N, dy]`` (differentiable in x and y); leading axes (slot pairs) are estimated apart and
    averaged. ``learning_loss`` trains the estimator's own parameters."""

    def learning_loss(
        self, x: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.zeros((), device=x.device)


class CLUB(MIEstimator):
    """Sampled CLUB: ``E[log q(y_i | x_i)] - E[log q(y_j | x_i)]`` with j a random other row.

    q(y | x) = N(mu(x), diag exp(logvar(x))). With the exact conditional of jointly Gaussian
    x, y (per-dimension correlation rho) the bound equals ``rho^2 / (1 - rho^2)`` per
    dimension, above the true MI ``-0.5 log(1 - rho^2)``: it is an upper bound to minimize.
    ``cond`` (optional) is concatenated to x, so one network serves many pairs.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 64, cond_dim: int = 0) -> None:
        super().__init__()
        self.mu = nn.Sequential(
            nn.Linear(x_dim + cond_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim)
        )
        self.logvar = nn.Sequential(
            nn.Linear(x_dim + cond_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh()
        )

    def _q(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        inp = x if cond is None else torch.cat([x, cond], -1)
        return self.mu(inp), self.logvar(inp)

    def learning_loss(
        self, x: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Negative log-likelihood of y under q(y | x), on detached inputs."""
        mu, logvar = self._q(x.detach(), None if cond is None else cond.detach())
        return (0.5 * ((y.detach() - mu).pow(2) / logvar.exp() + logvar)).sum(-1).mean()

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        mu, logvar = self._q(x, cond)
        perm = torch.randperm(y.shape[-2], device=y.device)
        positive = -(y - mu).pow(2) / logvar.exp()
        negative = -(y.index_select(-2, perm) - mu).pow(2) / logvar.exp()
        return 0.5 * (positive - negative).sum(-1).mean()


class HSIC(MIEstimator):
    """Biased HSIC estimate ``trace(K H L H) / (n - 1)^2`` with Gaussian kernels whose
    bandwidth is the median pairwise distance, on at most ``max_rows`` rows."""

    def __init__(self, max_rows: int = 512) -> None:
        super().__init__()
        self.max_rows = max_rows

    @staticmethod
    def _kernel(x: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x, x).pow(2)  # [..., N, N]
        # The median of the positive distances, 1 when there are none: computed where the
        # rows are, with no read back to the host (a masked select would wait for the GPU).
        positive = torch.where(d2 > 0, d2, torch.nan).flatten(-2)
        med = positive.nanmedian(-1).values.nan_to_num(1.0)[..., None, None]
        return torch.exp(-d2 / (2.0 * med.detach().clamp_min(1e-12)))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = x.shape[-2]
        if n > self.max_rows:
            rows = torch.randperm(n, device=x.device)[: self.max_rows]
            x, y, n = x.index_select(-2, rows), y.index_select(-2, rows), self.max_rows
        k, l_ = self._kernel(x), self._kernel(y)
        kc = (k - k.mean(-2, keepdim=True) - k.mean(-1, keepdim=True)
              + k.mean((-2, -1), keepdim=True))  # fmt: skip
        return ((kc * l_).sum((-2, -1)) / (n - 1) ** 2).mean()


def mi_estimator(name: str, dim: int, cond_dim: int = 0, hsic_rows: int = 512) -> MIEstimator:
    if name == "club":
        return CLUB(dim, dim, hidden=max(32, 4 * dim), cond_dim=cond_dim)
    if name == "hsic":
        return HSIC(hsic_rows)
    raise ValueError(f"unknown MI estimator {name!r}; known: club, hsic")


class SlotMI(nn.Module):
    """Mean MI estimate between knowledge vectors of different slots ``V [B, K, d]``, over
    ``pairs`` ordered slot pairs (k, k') sampled afresh at each call. CLUB shares one
    q-network across pairs, conditioned on learned embeddings of k and k'."""

    def __init__(
        self,
        estimator: str,
        slots: int,
        dim: int,
        pairs: int,
        hsic_rows: int = 512,
        rows: int = 0,
    ) -> None:
        super().__init__()
        self.rows = rows  # of each batch, its first (0: all)
        if slots < 2:
            raise ValueError("the disentangled term needs at least 2 slots")
        self.slots, self.pairs = slots, min(pairs, slots * (slots - 1))
        cond_dim = 2 * dim if estimator == "club" else 0
        self.slot_code = nn.Embedding(slots, dim) if cond_dim else None
        self.estimator = mi_estimator(estimator, dim, cond_dim, hsic_rows)

    def _pairs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.randint(0, self.slots, (self.pairs,), device=device)
        shift = torch.randint(1, self.slots, (self.pairs,), device=device)
        return first, (first + shift) % self.slots  # always a different slot

    def _pair_rows(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x, y, cond)`` of freshly sampled pairs, all pairs at once: ``x, y [P, B, d]``
        (the two slots' vectors), ``cond [P, B, 2d]`` (their codes) or None. The pairs are
        never read on the host: a step does not wait for the device to draw them."""
        first, second = self._pairs(v.device)
        if self.rows:
            v = v[: self.rows]
        # index_select, not v[:, first]: its backward adds rows in a fixed order (the
        # indexing's accumulating put does not on the CPU: a KB build then varied run to run)
        x = v.index_select(1, first).transpose(0, 1)
        y = v.index_select(1, second).transpose(0, 1)
        if self.slot_code is None:
            return x, y, None
        codes = torch.cat([self.slot_code(first), self.slot_code(second)], -1)  # [P, 2d]
        return x, y, codes[:, None].expand(-1, v.shape[0], -1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.estimator(*self._pair_rows(v))

    def learning_loss(self, v: torch.Tensor) -> torch.Tensor:
        return self.estimator.learning_loss(*self._pair_rows(v))


def gaussian_mi(x: torch.Tensor, y: torch.Tensor) -> float:
    """MI in nats of x and y under a joint Gaussian fit:
    ``0.5 * (log det Sx + log det Sy - log det Sxy)``; a descriptive figure for reports."""
    xy = torch.cat([x, y], 1).double()
    cov = torch.cov(xy.T) + 1e-6 * torch.eye(xy.shape[1], dtype=xy.dtype)
    dx = x.shape[1]
    ld = lambda m: torch.linalg.slogdet(m).logabsdet  # noqa: E731
    return float(0.5 * (ld(cov[:dx, :dx]) + ld(cov[dx:, dx:]) - ld(cov)))
