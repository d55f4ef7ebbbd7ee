"""Rules for transformer parts: token-embedding inputs, first-order attention, softmax read-out.

States here have a leading sequence dimension: mean (seq, d) with per-position covariance
(seq, d, d) or variances (seq, d). Positions are presumed independent of each other (the
presumption of independence across positions), which is exact for independently drawn tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from interplab.errors import UserError
from interplab.estimate.gaussian import Gaussian


def embedding(probs: torch.Tensor, W_E: torch.Tensor, pos: torch.Tensor | None = None,
              full: bool = True) -> Gaussian:
    """Mean and covariance of W_E[token] + pos for independent tokens with distribution `probs`.

    probs (seq, vocab) rows summing to 1; W_E (vocab, d); pos (seq, d) or None. The mean and
    covariance are exact (of a categorical mixture, which is not Gaussian: later rules treat it as
    one). FLOPs: 2·seq·vocab·d (mean) + 2·seq·vocab·d² (covariance) or 3·seq·vocab·d (variances).
    """
    if probs.shape[-1] != W_E.shape[0]:
        raise UserError(f"probs has {probs.shape[-1]} tokens, the embedding {W_E.shape[0]}")
    P, E = probs.to(W_E.dtype), W_E  # (seq, vocab), (vocab, d)
    seq, V, d = P.shape[0], E.shape[0], E.shape[1]
    mean = P @ E  # (seq, d)
    flops = 2 * seq * V * d
    if full:
        second = torch.einsum("sv,vi,vj->sij", P, E, E)  # (seq, d, d)
        cov, var = second - mean.unsqueeze(-1) * mean.unsqueeze(-2), None  # (seq, d, d)
        flops += 2 * seq * V * d * d + 2 * seq * d * d
    else:
        cov, var = None, (P @ E.square() - mean.square()).clamp_min(0)  # (seq, d)
        flops += 3 * seq * V * d + 2 * seq * d
    if pos is not None:
        mean = mean + pos.to(mean.dtype)
        flops += seq * d
    return Gaussian(mean, cov, var, flops=float(flops))


def attention(state: Gaussian, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor, W_o: torch.Tensor,
              n_heads: int, causal: bool = True, b_q: torch.Tensor | None = None,
              b_k: torch.Tensor | None = None, b_v: torch.Tensor | None = None, b_o: torch.Tensor | None = None,
              rotary: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Gaussian:
    """Multi-head self-attention, first order (approximate).

    The attention pattern A^h (seq, seq) is taken as the softmax of the scores at the mean input
    (the pattern's own randomness is ignored); given A the layer is linear, so
    out_i = Σ_j B_ij x_j + b with B_ij = Σ_h A^h_ij W_o^h W_v^h, mean exact given A, covariance
    Σ_j B_ij Σ_j B_ijᵀ (positions independent). Weights as nn.Linear: W_q, W_k, W_v (h·dh, d),
    W_o (d, h·dh). `rotary(q)` maps (heads, seq, dh) queries/keys if the model rotates them.
    FLOPs: the mean path as a forward pass, plus 2·seq²·d³ (full) or 2·seq²·d² (diagonal) for the
    covariance (pairs j > i skipped when causal).
    """
    x, dt = state.mean, state.mean.dtype  # (seq, d)
    if x.dim() != 2:
        raise UserError("attention expects a state of shape (seq, d)")
    seq, d = x.shape
    hd = W_q.shape[0] // n_heads

    def proj(W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        y = x @ W.to(dt).T + (b.to(dt) if b is not None else 0)  # (seq, h*hd)
        return y.view(seq, n_heads, hd).transpose(0, 1)  # (h, seq, hd)

    q, k = proj(W_q, b_q), proj(W_k, b_k)
    if rotary is not None:
        q, k = rotary(q), rotary(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (h, seq, seq)
    if causal:
        mask = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    A = scores.softmax(-1)  # (h, seq, seq)
    M = torch.stack([W_o.to(dt)[:, h * hd:(h + 1) * hd] @ W_v.to(dt)[h * hd:(h + 1) * hd] for h in range(n_heads)])
    B = torch.einsum("hij,hab->ijab", A, M)  # (seq, seq, d, d) position-pair maps
    bias_v = 0 if b_v is None else (W_o.to(dt) @ b_v.to(dt))  # (d,) value bias passes through A (rows sum to 1)
    mean = torch.einsum("ijab,jb->ia", B, x) + bias_v + (b_o.to(dt) if b_o is not None else 0)  # (seq, d)
    pairs = seq * (seq + 1) // 2 if causal else seq * seq
    flops = 3 * 2 * seq * d * n_heads * hd + 2 * n_heads * seq * seq * hd + 5 * n_heads * seq * seq
    flops += 2 * n_heads * d * hd * d + 2 * n_heads * pairs * d * d + 2 * pairs * d * d
    cov = var = cross = None
    if state.full:
        cov = torch.einsum("ijab,jbc,ijdc->iad", B, state.cov, B)  # (seq, d, d)
        flops += pairs * (2 * d**3 + 2 * d**3)
    else:
        var = torch.einsum("ijab,jb->ia", B.square(), state.variance)  # (seq, d)
        flops += pairs * 3 * d * d
    if state.cross is not None:  # Cov(out_i, anchor_i) = B_ii cross_i (other positions independent)
        Bii = torch.diagonal(B, dim1=0, dim2=1).permute(2, 0, 1)  # (seq, d, d)
        cross = Bii @ state.cross  # (seq, d, d0)
        flops += 2 * seq * d * d * state.cross.shape[-1]
    return Gaussian(mean, cov, var, None, None, cross, state.flops + flops)


def softmax_mean(state: Gaussian, method: str = "probit") -> tuple[torch.Tensor, float]:
    """E[softmax(z)] over the last dimension for Gaussian logits z (approximate), and its FLOPs.

    `probit`: softmax(mu / sqrt(1 + pi/8 var)) (mean-field); `lognormal`: E e^z_i = e^(mu_i + var_i/2),
    normalised (moment matching of the numerator only). Uses only the marginal variances.
    """
    mu, v = state.mean, state.variance  # (..., d)
    if method == "probit":
        p = (mu / (1 + math.pi / 8 * v).sqrt()).softmax(-1)
    elif method == "lognormal":
        p = (mu + v / 2).softmax(-1)
    else:
        raise UserError(f"unknown softmax method '{method}'; choose probit or lognormal")
    return p, float(8 * mu.numel())
