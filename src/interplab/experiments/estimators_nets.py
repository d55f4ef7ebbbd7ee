"""The networks of the estimators experiment: the real random MLPs and the planted controls.

Real subjects (`mlp_network`, `rare_network`): He-initialised ReLU MLPs without biases on
x ~ N(0, I), the test bed of the reference study. Controls go through the very same pipeline:
- positive (propagation exact by construction): `linear_network` (no nonlinearity, random biases:
  mean and covariance propagation are exact) and `linear_rare_network` (the pre-activation of the
  Heaviside is Gaussian, so its probability is exact under Gaussian propagation);
- negative (every estimator loses): `paired_network`. Its first layer reads each of w/2 orthogonal
  directions z twice, as +z and -z, so the two units of a pair are never active together; the next
  layer reads eps - (ReLU(z) + ReLU(-z)) = eps - |z|. Every estimator presumes that sum roughly
  Gaussian (mean, covariance, marginal cumulants), so it puts mass below 0 that |z| does not have:
  E ReLU(eps - |z|) and P(|z| < eps) come out far too large, or, where an Edgeworth correction turns
  negative, clamped to 0, no better than the constant estimate 0.
  (A network whose hidden units copy one unit was tried first and rejected: a mean pushed through
  linear layers stays exact, and mean propagation beat sampling on it.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from interplab.estimate import Heaviside
from interplab.subjects.mlp import MLPConfig, build_mlp

RARE_BIAS = -3.0
PAIRED_RARE_EPS = 0.00125  # P(|z| < eps) = 2 Phi(eps) - 1 ≈ 1e-3


def methods(order: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Propagation estimators run: result key -> (registry name, options)."""
    out = {"mean": ("mean", {}), "cov": ("cov", {"order": 1}), "cumulant": ("cumulant", {"order": 1})}
    if order > 1:
        out[f"cov_o{order}"] = ("cov", {"order": order})
        out[f"cumulant_o{order}"] = ("cumulant", {"order": order})
    return out


def mlp_network(width: int, depth: int, seed: int) -> nn.Sequential:
    """The `mlp` subject's network: no biases, He-normal weights."""
    return build_mlp(MLPConfig(width=width, depth=depth, seed=seed), torch.Generator().manual_seed(seed))


def rare_network(width: int, seed: int) -> nn.Sequential:
    """3 ReLU layers, then a linear layer with bias -3 and a Heaviside.

    The reference study quotes P ~ 1e-3 per unit; with He initialisation the last pre-activation has
    variance about 2, and the measured mean P(unit fires) is about 0.02 (reported with the verdict).
    """
    body = build_mlp(MLPConfig(width=width, depth=3, seed=seed), torch.Generator().manual_seed(seed))
    layers = dict(body.named_children())
    last = nn.Linear(width, width)
    with torch.no_grad():
        last.weight.copy_(layers["linear3"].weight)
        last.bias.fill_(RARE_BIAS)
    layers["linear3"] = last
    layers.pop("out")
    return nn.Sequential(*layers.values(), Heaviside())


def _linear(d_in: int, d_out: int, g: torch.Generator, bias_std: float | None) -> nn.Linear:
    """A linear layer with N(0, 1/d_in) weights (gain 1: the variance is kept) and N(0, bias_std²) biases."""
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
        layer = nn.Linear(d_in, d_out, bias=bias_std is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in))
        if layer.bias is not None:
            layer.bias.copy_(bias_std * torch.randn(d_out, generator=g))
    return layer


def linear_network(width: int, depth: int, seed: int) -> nn.Sequential:
    """Positive control of est-mlp: depth + 1 linear layers with random biases, no nonlinearity."""
    g = torch.Generator().manual_seed(seed)
    return nn.Sequential(*(_linear(width, width, g, 1.0) for _ in range(depth + 1)))


def linear_rare_network(width: int, seed: int) -> nn.Sequential:
    """Positive control of est-rare: 3 linear layers, a 4th with bias -3, the Heaviside (no ReLU)."""
    g = torch.Generator().manual_seed(seed)
    layers = [_linear(width, width, g, None) for _ in range(3)]
    last = _linear(width, width, g, 0.0)
    with torch.no_grad():
        last.bias.fill_(RARE_BIAS)
    return nn.Sequential(*layers, last, Heaviside())


def paired_network(width: int, seed: int, rare: bool = False) -> nn.Sequential:
    """Negative control: pairs (+z, -z) of w/2 orthogonal directions, then eps - |z| through a ReLU
    (eps uniform in [0.05, 0.3] per unit) or, with `rare`, through the Heaviside (eps = 0.00125)."""
    if width < 2:
        raise ValueError("the paired network needs a width of at least 2")
    g = torch.Generator().manual_seed(seed)
    k = width // 2
    q = torch.linalg.qr(torch.randn(width, width, generator=g))[0][:k]  # (k, width) orthonormal rows
    with torch.random.fork_rng(devices=[]):
        first, second = nn.Linear(width, 2 * k, bias=False), nn.Linear(2 * k, k)
    with torch.no_grad():
        w0 = torch.empty(2 * k, width)
        w0[0::2], w0[1::2] = q, -q  # unit 2j reads +z_j, unit 2j+1 reads -z_j
        first.weight.copy_(w0)
        w1 = torch.zeros(k, 2 * k)
        rows = torch.arange(k)
        w1[rows, 2 * rows] = w1[rows, 2 * rows + 1] = -1.0  # -(ReLU(z) + ReLU(-z)) = -|z|
        second.weight.copy_(w1)
        eps = torch.full((k,), PAIRED_RARE_EPS) if rare else 0.05 + 0.25 * torch.rand(k, generator=g)
        second.bias.copy_(eps)
    return nn.Sequential(first, nn.ReLU(), second, Heaviside() if rare else nn.ReLU())
