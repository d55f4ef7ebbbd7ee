"""Mahalanobis distance from the trusted activations, with scikit-learn's shrunk covariance estimators.

score(x) = (x - mean)ᵀ Σ⁺ (x - mean), Σ the trusted rows' covariance shrunk towards a multiple of
the identity, (1 - s) S + s tr(S)/d I, with s from
- "ledoit-wolf": Ledoit & Wolf's formula exactly as `sklearn.covariance.LedoitWolf` computes it;
- "oas": the Oracle Approximating Shrinkage, as `sklearn.covariance.OAS`;
- a number in [0, 1]: `sklearn.covariance.ShrunkCovariance(shrinkage=s)`; "none" or 0: the
  empirical covariance (`EmpiricalCovariance`).
S divides by n (biased), as scikit-learn's estimators do. Σ⁺ is the pseudo-inverse that keeps
eigenvalues above rcond x the largest (default: d x machine epsilon, scipy's `pinvh`; cupbearer,
the reference MAD library, uses rcond = 1e-5 without shrinkage). The score is scikit-learn's
`mahalanobis`, to rounding.

Faster than scikit-learn because it computes the covariance once, in chunks, and gets the
Ledoit-Wolf shrinkage from it and from Σ_k ||x_k - mean||⁴ in O(nd) (scikit-learn recomputes
XᵀX and (X∘X)ᵀ(X∘X) blockwise), and scores with one matrix product per chunk instead of
scipy's per-row distance loop.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field

from interplab.mad.base import Detector, DetectorSettings, Views, register

CHUNK = 8192


class Moments(NamedTuple):
    """Mean (d,), biased covariance (d, d), Σ_k ||x_k - mean||⁴ and the row count of trusted rows."""

    mean: torch.Tensor
    cov: torch.Tensor
    fourth: float
    n: int


def moments(X: torch.Tensor, chunk: int = CHUNK) -> Moments:
    """Moments of rows X (n, d), accumulated over chunks of rows (no centred copy of X)."""
    X = X.to(torch.float64)
    n, d = X.shape
    mean = X.mean(0)  # (d,)
    cov = torch.zeros(d, d, dtype=torch.float64)
    fourth = 0.0
    for part in X.split(chunk):
        xc = part - mean  # (chunk, d)
        cov.addmm_(xc.T, xc)
        fourth += float(xc.square().sum(1).square().sum())
    return Moments(mean, cov / n, fourth, n)


def ledoit_wolf(m: Moments) -> float:
    """Ledoit-Wolf shrinkage, scikit-learn's `ledoit_wolf_shrinkage` on the centred rows."""
    d = m.cov.shape[0]
    if d == 1:
        return 0.0
    tr = float(torch.trace(m.cov))
    mu = tr / d
    fro2 = float(m.cov.square().sum())  # Σ (XᵀX)²_ab / n²
    beta = (m.fourth / m.n - fro2) / (d * m.n)  # Σ_ab ((X∘X)ᵀ(X∘X))_ab = Σ_k ||x_k||⁴
    delta = (fro2 - 2.0 * mu * tr + d * mu * mu) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def oas(m: Moments) -> float:
    """Oracle Approximating Shrinkage, as scikit-learn's `oas`."""
    d = m.cov.shape[0]
    if d == 1:
        return 0.0
    alpha = float(m.cov.square().mean())
    mu = float(torch.trace(m.cov)) / d
    num, den = alpha + mu * mu, (m.n + 1) * (alpha - mu * mu / d)
    return 1.0 if den == 0 else min(num / den, 1.0)


def shrunk(cov: torch.Tensor, s: float) -> torch.Tensor:
    """(1 - s) cov + s tr(cov)/d I."""
    d = cov.shape[0]
    return (1 - s) * cov + s * float(torch.trace(cov)) / d * torch.eye(d, dtype=cov.dtype)


Shrinkage = Literal["ledoit-wolf", "oas", "none"] | float


def covariance(m: Moments, shrinkage: Shrinkage) -> tuple[torch.Tensor, float]:
    """The shrunk covariance and the shrinkage used."""
    if shrinkage == "ledoit-wolf":
        s = ledoit_wolf(m)
    elif shrinkage == "oas":
        s = oas(m)
    elif shrinkage == "none":
        s = 0.0
    else:
        s = float(shrinkage)
    return (shrunk(m.cov, s) if s else m.cov), s


class Whitener(NamedTuple):
    """x -> (x - mean) W with W = V Λ^-1/2 over the kept eigenvalues: ||·||² is the Mahalanobis distance."""

    mean: torch.Tensor  # (d,)
    W: torch.Tensor  # (d, rank)
    logdet: float  # Σ log λ over the kept eigenvalues
    rank: int

    @classmethod
    def of(cls, mean: torch.Tensor, cov: torch.Tensor, rcond: float | None = None) -> Whitener:
        lam, V = torch.linalg.eigh(cov.to(torch.float64))  # (d,), (d, d)
        d = cov.shape[0]
        cut = (d * np.finfo(np.float64).eps if rcond is None else rcond) * float(lam.abs().max().clamp_min(0))
        keep = lam > cut
        W = V[:, keep] / lam[keep].sqrt()  # (d, rank)
        return cls(mean.to(torch.float64), W, float(lam[keep].log().sum()), int(keep.sum()))

    def sq_distance(self, X: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
        """(n,) squared Mahalanobis distances of rows X (n, d)."""
        out = [((part.to(torch.float64) - self.mean) @ self.W).square().sum(1) for part in X.split(chunk)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def nll(self, X: torch.Tensor) -> torch.Tensor:
        """(n,) negative log-density of rows X under N(mean, cov) on the kept eigenspace."""
        return 0.5 * (self.sq_distance(X) + self.logdet + self.rank * math.log(2 * math.pi))


class MahalanobisSettings(DetectorSettings):
    shrinkage: Literal["ledoit-wolf", "oas", "none"] | float = Field("ledoit-wolf")
    """How the covariance is shrunk: "ledoit-wolf", "oas", "none", or a fixed number in [0, 1]."""
    rcond: float | None = Field(None, ge=0)
    """Eigenvalues below rcond x the largest are dropped from the pseudo-inverse (None: d x eps)."""


@register("mahalanobis", help="Mahalanobis distance from the trusted activations (shrunk covariance)")
class Mahalanobis(Detector):
    Settings = MahalanobisSettings

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        s = self.settings.shrinkage
        if isinstance(s, float) and not 0 <= s <= 1:
            from interplab.errors import UserError

            raise UserError(f"shrinkage must be in [0, 1] or one of ledoit-wolf, oas, none; got {s}")
        m = moments(X)
        cov, self.shrinkage_ = covariance(m, s)
        self.whitener_ = Whitener.of(m.mean, cov, self.settings.rcond)

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        return self.whitener_.sq_distance(X)
