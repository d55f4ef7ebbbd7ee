"""The Gaussian state that heuristic estimators push through a network, and its FLOP bookkeeping.

A state describes the distribution of one activation vector (or a batch of independent ones, in
leading dimensions: instances of a toy model, positions of a sequence) by

- `mean` (..., d);
- either `cov` (..., d, d), the full covariance (Gaussian closure), or `var` (..., d) alone
  (every unit presumed independent of every other);
- optionally `k3`, `k4` (..., d): third and fourth marginal cumulants (zero for a Gaussian);
- optionally `cross` (..., d, d0): the covariance with an *anchor* state, tracked across a residual
  block so that `x + f(x)` gets its variance right (see `rules.residual`);
- `flops`: the FLOPs spent so far to compute this state. Every rule returns a new state whose
  `flops` adds the cost of that rule, counted from its operations (a matmul of (m, k) by (k, n) is
  2mkn, an elementwise op on n numbers is n), never timed.

States are immutable: rules return new ones (`dataclasses.replace`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from interplab.errors import UserError


@dataclass(frozen=True)
class Gaussian:
    """Mean, covariance or its diagonal, optional marginal cumulants, and the FLOPs spent so far.

        Gaussian(torch.zeros(8), torch.eye(8))          # full covariance
        Gaussian(torch.zeros(8), var=torch.ones(8))     # independent units
    """

    mean: torch.Tensor  # (..., d)
    cov: torch.Tensor | None = None  # (..., d, d)
    var: torch.Tensor | None = None  # (..., d) used only when cov is None
    k3: torch.Tensor | None = None  # (..., d)
    k4: torch.Tensor | None = None  # (..., d)
    cross: torch.Tensor | None = None  # (..., d, d0) covariance with an anchor state
    flops: float = 0.0

    def __post_init__(self) -> None:
        d = self.mean.shape[-1:]
        if self.cov is None and self.var is None:
            raise UserError("a Gaussian state needs `cov` (..., d, d) or `var` (..., d)")
        if self.cov is not None and self.cov.shape[-2:] != d + d:
            raise UserError(f"cov must end in ({d[0]}, {d[0]}), got {tuple(self.cov.shape)}")
        if self.cov is None and self.var is not None and self.var.shape[-1:] != d:
            raise UserError(f"var must end in ({d[0]},), got {tuple(self.var.shape)}")

    # ------------------------------------------------------------------ views
    @property
    def full(self) -> bool:
        """Whether the full covariance is tracked."""
        return self.cov is not None

    @property
    def d(self) -> int:
        return int(self.mean.shape[-1])

    @property
    def batch(self) -> int:
        """Number of independent states in the leading dimensions (multiplies every FLOP count)."""
        return int(math.prod(self.mean.shape[:-1]))

    @property
    def variance(self) -> torch.Tensor:
        """The marginal variances (..., d), from whichever of cov / var is held."""
        if self.cov is not None:
            return torch.diagonal(self.cov, dim1=-2, dim2=-1)  # (..., d)
        assert self.var is not None
        return self.var

    @property
    def std(self) -> torch.Tensor:
        return self.variance.clamp_min(0).sqrt()  # (..., d)

    def diagonal(self) -> Gaussian:
        """The same state with the covariance dropped to its diagonal (presume independence)."""
        return dataclasses.replace(self, cov=None, var=self.variance.clone(), cross=None)

    def with_cumulants(self) -> Gaussian:
        """The same state with zero k3 and k4 tracked (a Gaussian's higher cumulants)."""
        z = torch.zeros_like(self.mean)
        return dataclasses.replace(self, k3=self.k3 if self.k3 is not None else z,
                                   k4=self.k4 if self.k4 is not None else z.clone())

    def add_flops(self, n: float) -> Gaussian:
        return dataclasses.replace(self, flops=self.flops + float(n))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws (n, ..., d) from the Gaussian with this mean and covariance (cumulants ignored)."""
        eps = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)  # (n, ..., d)
        if self.cov is None:
            return self.mean + eps * self.std
        L = _cholesky(self.cov)  # (..., d, d)
        return self.mean + (L @ eps.unsqueeze(-1)).squeeze(-1)  # (n, ..., d)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def standard(cls, d: int, full: bool = True, dtype: torch.dtype = torch.float64) -> Gaussian:
        """N(0, I) in d dimensions."""
        mean = torch.zeros(d, dtype=dtype)
        return cls(mean, torch.eye(d, dtype=dtype)) if full else cls(mean, var=torch.ones(d, dtype=dtype))

    @classmethod
    def fit(cls, samples: torch.Tensor, full: bool = True, cumulants: bool = False) -> Gaussian:
        """Moment-match samples (n, ..., d): mean, covariance (or variances), optionally k3, k4.

        FLOPs of the fit are charged: n·d per moment, 2·n·d² for the covariance.
        """
        x = samples.to(torch.float64) if samples.dtype != torch.float64 else samples
        n, d = x.shape[0], x.shape[-1]
        batch = math.prod(x.shape[1:-1])
        mean = x.mean(0)  # (..., d)
        c = x - mean  # (n, ..., d)
        flops = 2 * n * d * batch
        k3 = k4 = None
        if full:
            xt = c.movedim(0, -1)  # (..., d, n)
            cov, var = xt @ xt.transpose(-1, -2) / max(n - 1, 1), None  # (..., d, d)
            flops += 2 * n * d * d * batch
        else:
            cov, var = None, c.square().mean(0) * n / max(n - 1, 1)  # (..., d)
            flops += 2 * n * d * batch
        if cumulants:
            m2, m3, m4 = (c.square().mean(0), c.pow(3).mean(0), c.pow(4).mean(0))  # (..., d) each
            k3, k4 = m3, m4 - 3 * m2.square()
            flops += 6 * n * d * batch
        return cls(mean, cov, var, k3, k4, flops=flops)


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a covariance, with a growing jitter for singular ones."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    scale = float(torch.diagonal(cov, dim1=-2, dim2=-1).abs().mean()) or 1.0
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        L, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if int(info.max()) == 0:
            return L
    evals, evecs = torch.linalg.eigh(cov)  # (..., d), (..., d, d)
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)
