"""Expectations of elementwise nonlinearities under a Gaussian (or Edgeworth-corrected) marginal.

Everything reduces to one table: for X = mu + s Z with Z ~ N(0, 1),

    H[p, k] = E_N[ f(X)^p He_k(Z) ]          (He_k: probabilists' Hermite polynomials)

from which follow
- the moments E f(X)^p (k = 0), exact under a Gaussian;
- the Edgeworth-corrected moments for a marginal with skew g1 and excess kurtosis g2:
  E f^p ~ H[p,0] + g1/6 H[p,3] + g2/24 H[p,4] + g1^2/72 H[p,6]  (approximate: truncated series);
- the Mehler coefficients E f^(k)(X) = s^-k H[1, k] (Gaussian integration by parts), exact.

ReLU and Heaviside have closed forms (exact): with a = mu/s, g(z) = (z + a)_+^p and the truncated
moments T_0 = Phi(a), T_1 = a Phi(a) + phi(a), T_p = a T_{p-1} + (p-1) T_{p-2},
E[g He_k] = E[g^(k)] = p!/(p-k)! T_{p-k}(a) for k <= p, and p! (-1)^m He_m(a) phi(a), m = k-p-1,
for k > p (the derivatives of the kink are derivatives of a delta). Heaviside is the case p = 0.
Smooth nonlinearities (GELU, SiLU, tanh, sigmoid) use Gauss–Hermite quadrature with `NODES`
points (approximate, error far below sampling noise for these analytic functions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

NODES = 100
_SQRT2PI = math.sqrt(2 * math.pi)


def hermite(k_max: int, z: torch.Tensor) -> list[torch.Tensor]:
    """He_0 .. He_{k_max} at z (probabilists'): He_{k+1} = z He_k - k He_{k-1}."""
    out = [torch.ones_like(z), z.clone()]
    for k in range(1, k_max):
        out.append(z * out[k] - k * out[k - 1])
    return out[: k_max + 1]


def phi(a: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * a * a) / _SQRT2PI


def Phi(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.special.erfc(-a / math.sqrt(2.0))


@lru_cache(maxsize=8)
def _gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.from_numpy(x), torch.from_numpy(w / w.sum())  # (n,), (n,) weights sum to 1


@dataclass(frozen=True)
class Nonlinearity:
    """An elementwise function with its cost per evaluation (FLOPs) and, if any, a closed form."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    cost: int  # FLOPs per evaluation, counted by hand (exp/erf/tanh count as one op)
    closed_power: int | None = None  # g = (z + a)_+^p scaled by s^p: 1 for ReLU, 0 for Heaviside
    bounds: tuple[float, float] = (-math.inf, math.inf)  # range of f, enforced on estimated means


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


NONLINEARITIES: dict[str, Nonlinearity] = {
    "relu": Nonlinearity("relu", torch.relu, 1, closed_power=1, bounds=(0.0, math.inf)),
    "heaviside": Nonlinearity("heaviside", lambda x: (x > 0).to(x.dtype), 1, closed_power=0, bounds=(0.0, 1.0)),
    "gelu": Nonlinearity("gelu", _gelu, 5, bounds=(-0.17, math.inf)),
    "silu": Nonlinearity("silu", torch.nn.functional.silu, 4, bounds=(-0.28, math.inf)),
    "tanh": Nonlinearity("tanh", torch.tanh, 1, bounds=(-1.0, 1.0)),
    "sigmoid": Nonlinearity("sigmoid", torch.sigmoid, 3, bounds=(0.0, 1.0)),
}


def _closed_table(p0: int, mu: torch.Tensor, s: torch.Tensor, powers: int, k_max: int) -> torch.Tensor:
    """H[p, k] for f = ReLU (p0 = 1) or Heaviside (p0 = 0), exact. Returns (..., d, powers, k_max+1)."""
    a = mu / s  # (..., d)
    pa, Pa = phi(a), Phi(a)  # (..., d)
    T = [Pa, a * Pa + pa]  # truncated moments E[(z + a)_+^q]
    for q in range(2, powers * max(p0, 1) + 1):
        T.append(a * T[q - 1] + (q - 1) * T[q - 2])
    He = hermite(max(k_max, 1), a)
    rows = []
    for p in range(1, powers + 1):
        q = p * p0  # f^p = s^q (z + a)_+^q
        scale = s**q  # (..., d)
        cols = []
        for k in range(k_max + 1):
            if k <= q:
                val = math.factorial(q) / math.factorial(q - k) * T[q - k]
            else:
                m = k - q - 1
                val = math.factorial(q) * (-1) ** m * He[m] * pa
            cols.append(scale * val)
        rows.append(torch.stack(cols, -1))  # (..., d, K)
    return torch.stack(rows, -2)  # (..., d, P, K)


def _quad_table(f: Nonlinearity, mu: torch.Tensor, s: torch.Tensor, powers: int, k_max: int) -> torch.Tensor:
    """H[p, k] by Gauss–Hermite quadrature (approximate). Returns (..., d, powers, k_max+1)."""
    x, w = _gauss_hermite(NODES)
    x, w = x.to(mu.dtype), w.to(mu.dtype)
    vals = f.fn(mu.unsqueeze(-1) + s.unsqueeze(-1) * x)  # (..., d, N)
    He = torch.stack(hermite(max(k_max, 1), x)[: k_max + 1], 0) * w  # (K, N) weighted
    fp = torch.stack([vals**p for p in range(1, powers + 1)], -2)  # (..., d, P, N)
    return fp @ He.T  # (..., d, P, K)


def table(f: Nonlinearity, mu: torch.Tensor, s: torch.Tensor, powers: int, k_max: int) -> tuple[torch.Tensor, float]:
    """H[p, k] = E_N[f(mu + s Z)^p He_k(Z)] for p = 1..powers, k = 0..k_max, and its FLOPs.

    Computed in float64 whatever the input dtype; a zero variance is treated as a tiny one.
    """
    mu64, s64 = mu.double(), s.double().clamp_min(1e-150)
    s64 = torch.maximum(s64, 1e-9 * mu64.abs())  # keeps a = mu/s finite for deterministic units
    n = mu.numel()
    if f.closed_power is not None:
        out = _closed_table(f.closed_power, mu64, s64, powers, k_max)
        flops = n * (12 + 4 * powers * (k_max + 1))
    else:
        out = _quad_table(f, mu64, s64, powers, k_max)
        flops = n * NODES * (2 + f.cost + powers + 2 * powers * (k_max + 1))
    return out.to(mu.dtype), float(flops)


def edgeworth_moments(H: torch.Tensor, g1: torch.Tensor | None, g2: torch.Tensor | None) -> torch.Tensor:
    """Moments E f^p (..., d, P) from a table with k_max >= 6, Edgeworth-corrected (approximate).

    The density phi(z) [1 + g1/6 He3 + g2/24 He4 + g1^2/72 He6] is the Edgeworth expansion of a
    standardised variable with skew g1 and excess kurtosis g2, truncated after terms of order 1/n.
    """
    m = H[..., 0]  # (..., d, P)
    if g1 is None or g2 is None:
        return m
    g1, g2 = g1.unsqueeze(-1), g2.unsqueeze(-1)  # (..., d, 1)
    return m + g1 / 6 * H[..., 3] + g2 / 24 * H[..., 4] + g1 * g1 / 72 * H[..., 6]


def cumulants_from_moments(m: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mean, var, k3, k4) from raw moments m (..., 4) = E X, E X^2, E X^3, E X^4."""
    m1, m2, m3, m4 = m.unbind(-1)
    var = (m2 - m1 * m1).clamp_min(0)
    k3 = m3 - 3 * m1 * m2 + 2 * m1**3
    k4 = m4 - 4 * m1 * m3 - 3 * m2 * m2 + 12 * m1 * m1 * m2 - 6 * m1**4
    return m1, var, k3, k4


def arccos_cov(cov: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Cov(ReLU X_i, ReLU X_j) for zero-mean jointly Gaussian X: the arc-cosine kernel (exact).

    E[ReLU(x) ReLU(y)] = s_x s_y / 2pi (sin t + (pi - t) cos t) with cos t the correlation; the
    product of means s_x s_y / 2pi is subtracted.
    """
    ss = s.unsqueeze(-1) * s.unsqueeze(-2)  # (..., d, d)
    c = (cov / ss.clamp_min(1e-300)).clamp(-1, 1)  # (..., d, d) correlations
    t = torch.arccos(c)
    return ss / (2 * math.pi) * (torch.sin(t) + (math.pi - t) * c - 1)
