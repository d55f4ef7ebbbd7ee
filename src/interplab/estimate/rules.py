"""Per-layer rules on the Gaussian state: each takes a `Gaussian` and returns the next one.

Public, stable signatures (other packages build propagation out of them):

    linear(state, W, b=None)                      W (out, in) or (..., out, in), as nn.Linear
    relu(state, order=1) / gelu / silu / tanh / sigmoid / heaviside(state, order=1)
    elementwise(state, name, order=1, arccos=True)
    add(a, b)                                     sum of two states presumed independent
    residual(state, block)                        x + block(x), with Cov(x, block(x)) tracked
    layernorm(state, weight=None, bias=None, eps=1e-5) / rmsnorm(state, weight=None, eps=1e-6)
    embedding(probs, W_E, pos=None)               (in attention.py) and attention(...)

Which rules are exact:
- `linear`: exact for mean and covariance (any input distribution); its cumulant update presumes
  the units independent beyond second order (approximate when they are not).
- elementwise rules: the mean and variance of each unit are exact for a Gaussian marginal; the
  Edgeworth corrections for a non-Gaussian marginal are approximate (truncated series); the
  covariance is the Mehler series truncated at `order` (approximate; exact for zero-mean ReLU
  pre-activations with `arccos=True`, and on the diagonal, which is replaced by the exact variance).
- `add`: exact when the two states are independent; `residual`: exact for mean; the covariance is
  exact when the block is linear and the state Gaussian, first-order otherwise.
- `layernorm`, `rmsnorm`: approximate (first order: divide by the expected norm, rest linear).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from interplab.errors import UserError
from interplab.estimate import nonlin
from interplab.estimate.gaussian import Gaussian


def linear(state: Gaussian, W: torch.Tensor, b: torch.Tensor | None = None) -> Gaussian:
    """y = W x + b (exact for mean and covariance). W is (out, in) like nn.Linear, or batched (..., out, in).

    FLOPs: 2·out·in for the mean, 2·out·in² + 2·out²·in for W Σ Wᵀ (full) or out·in + 2·out·in for
    (W∘W) var (diagonal), times the batch of states.
    """
    W = W.to(state.mean.dtype)
    o, i = W.shape[-2:]
    if state.d != i:
        raise UserError(f"linear layer expects {i} inputs, the state has {state.d}")
    B = state.batch
    mean = (W @ state.mean.unsqueeze(-1)).squeeze(-1)  # (..., out)
    flops = 2 * o * i * B
    if b is not None:
        mean = mean + b.to(mean.dtype)
        flops += o * B
    cov = var = k3 = k4 = cross = None
    if state.full:
        cov = W @ state.cov @ W.transpose(-1, -2)  # (..., out, out)
        flops += (2 * o * i * i + 2 * o * o * i) * B
    else:
        W2 = W * W  # (..., out, in)
        var = (W2 @ state.variance.unsqueeze(-1)).squeeze(-1)  # (..., out)
        flops += (o * i + 2 * o * i) * B
    if state.k3 is not None and state.k4 is not None:  # cumulants of independent summands add
        W3 = W * W * W  # (..., out, in)
        k3 = (W3 @ state.k3.unsqueeze(-1)).squeeze(-1)  # (..., out)
        k4 = ((W3 * W) @ state.k4.unsqueeze(-1)).squeeze(-1)  # (..., out)
        flops += 6 * o * i * B
    if state.cross is not None:
        cross = W @ state.cross  # (..., out, d0)
        flops += 2 * o * i * state.cross.shape[-1] * B
    return Gaussian(mean, cov, var, k3, k4, cross, state.flops + flops)


def elementwise(state: Gaussian, name: str, order: int = 1, arccos: bool = True) -> Gaussian:
    """y = f(x) unit by unit, f one of nonlin.NONLINEARITIES (relu, heaviside, gelu, silu, tanh, sigmoid).

    Exact mean and variance per unit for a Gaussian marginal; Edgeworth-corrected (approximate)
    when the state carries k3, k4. Full covariance: Mehler series up to `order` (approximate), or
    the arc-cosine kernel for ReLU when every pre-activation mean is zero and `arccos` (exact).
    Cross-covariance with an anchor: E[f'(x)] · cross (Stein's lemma, exact for Gaussians).
    """
    if name not in nonlin.NONLINEARITIES:
        raise UserError(f"unknown nonlinearity '{name}'; choose from {', '.join(nonlin.NONLINEARITIES)}")
    f = nonlin.NONLINEARITIES[name]
    mu, s = state.mean, state.std  # (..., d)
    cumulants = state.k3 is not None and state.k4 is not None
    k_max = max(order, 6 if cumulants else 1, 1)
    H, flops = nonlin.table(f, mu, s, 4 if cumulants else 2, k_max)  # (..., d, P, K)
    if cumulants:
        s_safe = s.clamp_min(1e-12)
        g1, g2 = state.k3 / s_safe**3, state.k4 / s_safe**4  # (..., d)
        m = nonlin.edgeworth_moments(H, g1, g2)  # (..., d, 4)
        mean, var, k3, k4 = nonlin.cumulants_from_moments(m)
        mean = mean.clamp(*f.bounds)  # a truncated series can leave the range of f: a ReLU mean stays >= 0
        flops += 20 * mu.numel()
    else:
        m = H[..., 0]  # (..., d, 2)
        mean, var, k3, k4 = m[..., 0], (m[..., 1] - m[..., 0].square()).clamp_min(0), None, None
        flops += 3 * mu.numel()
    ks = torch.arange(k_max + 1, dtype=mu.dtype)
    s_eff = torch.maximum(s.clamp_min(1e-150), 1e-9 * mu.abs())  # the scale `nonlin.table` used
    c = torch.nan_to_num(H[..., 0, :] / s_eff.unsqueeze(-1) ** ks, nan=0.0, posinf=0.0, neginf=0.0)  # (..., d, K) E f^(k)
    cov = new_var = cross = None
    if state.full:
        cov, extra = _mehler(state.cov, c, s, mu, var, order, arccos and f.name == "relu")
        flops += extra * state.batch
    else:
        new_var = var
    if state.cross is not None:
        cross = c[..., 1].unsqueeze(-1) * state.cross  # (..., d, d0)
        flops += state.cross[..., 0, :].numel() * state.d
    return Gaussian(mean, cov, new_var, k3, k4, cross, state.flops + flops)


def _mehler(cov: torch.Tensor, c: torch.Tensor, s: torch.Tensor, mu: torch.Tensor, var: torch.Tensor,
            order: int, use_arccos: bool) -> tuple[torch.Tensor, float]:
    """Post-nonlinearity covariance: sum_{k=1..order} Σ^k / k! c_k c_kᵀ, diagonal set to the exact var."""
    d = cov.shape[-1]
    if use_arccos and bool((mu == 0).all()):
        out, flops = nonlin.arccos_cov(cov, s), 12 * d * d
    else:
        out = torch.zeros_like(cov)
        power = torch.ones_like(cov)
        flops = 0
        for k in range(1, order + 1):
            power = power * cov  # (..., d, d) Σ^k elementwise
            ck = c[..., k]  # (..., d)
            out = out + power * (ck.unsqueeze(-1) * ck.unsqueeze(-2) / float(math.factorial(k)))
            flops += 4 * d * d
    out = out - torch.diag_embed(torch.diagonal(out, dim1=-2, dim2=-1)) + torch.diag_embed(var)
    return out, float(flops + 2 * d)


def relu(state: Gaussian, order: int = 1, arccos: bool = True) -> Gaussian:
    """ReLU (closed form; see `elementwise` for exactness)."""
    return elementwise(state, "relu", order, arccos)


def heaviside(state: Gaussian, order: int = 1) -> Gaussian:
    """1[x > 0] (closed form): the mean is P(x > 0), exact for a Gaussian marginal, kept in [0, 1]."""
    return elementwise(state, "heaviside", order)


def gelu(state: Gaussian, order: int = 1) -> Gaussian:
    """GELU (exact erf form) by Gauss–Hermite quadrature; see `elementwise`."""
    return elementwise(state, "gelu", order)


def silu(state: Gaussian, order: int = 1) -> Gaussian:
    """SiLU / swish by Gauss–Hermite quadrature; see `elementwise`."""
    return elementwise(state, "silu", order)


def tanh(state: Gaussian, order: int = 1) -> Gaussian:
    """tanh by Gauss–Hermite quadrature; see `elementwise`."""
    return elementwise(state, "tanh", order)


def sigmoid(state: Gaussian, order: int = 1) -> Gaussian:
    """Logistic sigmoid by Gauss–Hermite quadrature; see `elementwise`."""
    return elementwise(state, "sigmoid", order)


def add(a: Gaussian, b: Gaussian) -> Gaussian:
    """a + b presumed independent (exact if they are): means, covariances and cumulants add."""
    if a.full != b.full:
        a, b = a.diagonal(), b.diagonal()
    cov = a.cov + b.cov if a.full else None
    var = None if a.full else a.variance + b.variance
    k3 = a.k3 + b.k3 if a.k3 is not None and b.k3 is not None else None
    k4 = a.k4 + b.k4 if a.k4 is not None and b.k4 is not None else None
    n = a.mean.numel() * (a.d if a.full else 1)
    return Gaussian(a.mean + b.mean, cov, var, k3, k4, None, a.flops + b.flops + 2 * n)


def residual(state: Gaussian, block: Callable[[Gaussian], Gaussian]) -> Gaussian:
    """x + block(x), tracking Cov(x, block(x)) through the block (first order, see module doc).

    The block runs on the state with `cross` set to its own covariance (or variances as a diagonal
    matrix); every rule carries `cross` forward, so the sum's covariance is
    Σ_x + Σ_f + C + Cᵀ and its variance var_x + var_f + 2 diag C. Higher cumulants add as if independent.
    """
    if state.cross is not None:
        raise UserError("nested residual blocks are not supported: close the outer one first")
    anchor = state.cov if state.full else torch.diag_embed(state.variance)  # (..., d, d)
    out = block(dataclasses.replace(state, cross=anchor))
    if out.cross is None or out.d != state.d:
        raise UserError("a residual block must return a state of the same width built with the rules")
    C = out.cross  # (..., d, d) Cov(f(x), x)
    n = state.mean.numel() * state.d
    cov = var = None
    if state.full and out.full:
        cov = state.cov + out.cov + C + C.transpose(-1, -2)  # (..., d, d)
    else:
        var = state.variance + out.variance + 2 * torch.diagonal(C, dim1=-2, dim2=-1)  # (..., d)
        var = var.clamp_min(0)
    k3 = state.k3 + out.k3 if state.k3 is not None and out.k3 is not None else None
    k4 = state.k4 + out.k4 if state.k4 is not None and out.k4 is not None else None
    return Gaussian(state.mean + out.mean, cov, var, k3, k4, None, out.flops + 4 * n)


def _norm(state: Gaussian, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
          centre: bool) -> Gaussian:
    d, dt = state.d, state.mean.dtype
    mu = state.mean - state.mean.mean(-1, keepdim=True) if centre else state.mean  # (..., d)
    v = state.variance
    spread = v.sum(-1) - (v.sum(-1) / d if not state.full else state.cov.sum((-1, -2)) / d) if centre else v.sum(-1)
    sigma = ((mu.square().sum(-1) + spread) / d + eps).sqrt()  # (...,) expected RMS, first order
    g = (weight.to(dt) if weight is not None else torch.ones(d, dtype=dt)) / sigma.unsqueeze(-1)  # (..., d)
    u = mu / sigma.unsqueeze(-1)  # (..., d) the normalised mean
    P = torch.eye(d, dtype=dt) - u.unsqueeze(-1) * u.unsqueeze(-2) / d  # (..., d, d) the norm's own response
    if centre:
        P = P - 1.0 / d  # (I - 11ᵀ/d - u uᵀ/d): the Jacobian of x ↦ (x - x̄)/rms at the mean, u ⟂ 1
    J = g.unsqueeze(-1) * P  # (..., d, d) diag(w/σ) P
    flops = state.flops + 6 * d * state.batch  # the expected norm; `linear` charges the dense map J
    out = linear(dataclasses.replace(state, flops=flops, k3=None, k4=None), J, bias)
    out = dataclasses.replace(out, mean=g * mu + (bias.to(dt) if bias is not None else 0))  # (..., d)
    if state.k3 is not None and state.k4 is not None:  # cumulants scale by g^3, g^4 (centring ignored)
        out = dataclasses.replace(out, k3=state.k3 * g**3, k4=state.k4 * g**4)
    return out


def layernorm(state: Gaussian, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              eps: float = 1e-5) -> Gaussian:
    """LayerNorm, first order (approximate): σ² = E||x - x̄||²/d + eps (expected norm); the mean maps to
    w ∘ (μ - μ̄)/σ + b and fluctuations through the Jacobian at the mean, diag(w/σ)(I - 11ᵀ/d - uuᵀ/d),
    u = (μ - μ̄)/σ. Exact as the noise goes to zero."""
    return _norm(state, weight, bias, eps, centre=True)


def rmsnorm(state: Gaussian, weight: torch.Tensor | None = None, eps: float = 1e-6) -> Gaussian:
    """RMSNorm, first order (approximate): r² = E||x||²/d + eps; mean w ∘ μ/r, fluctuations through
    diag(w/r)(I - uuᵀ/d), u = μ/r. Exact as the noise goes to zero."""
    return _norm(state, weight, None, eps, centre=False)


# Transformer parts live in attention.py; re-exported so that `rules` is the one place to look.
from interplab.estimate.attention import attention, embedding, softmax_mean  # noqa: F401
