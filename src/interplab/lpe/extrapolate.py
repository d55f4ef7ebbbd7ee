"""Activation extrapolation: QLD and GLD from a sample of final activations (before the unembedding).

Both read n activations x_i (n, d) of inputs drawn from D and the unembedding logits = W x + b
(W (V, d), b (V,)); their cost is the n forward passes. The pair count of QLD and the Gaussian fit of
GLD are not counted (they cost O(n V) arithmetic, far less than n forward passes of a transformer).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import nnls
from scipy.stats import norm


class Whitened(NamedTuple):
    """Whitened sample u (n, d) and the logits as affine maps of u: logits(u) = c + G u."""

    u: np.ndarray  # (n, d)
    G: np.ndarray  # (V, d)
    c: np.ndarray  # (V,)


def whiten(acts: np.ndarray, W: np.ndarray, b: np.ndarray, ridge: float = 1e-5) -> Whitened:
    """mu, C + ridge I = A A^T (Cholesky), u = (x - mu) A^-T; then x = mu + A u and logits = c + G u.

    The public code of the source computes `x - mu @ inv(A.T)`, which by operator precedence is
    x - (mu A^-T), not (x - mu) A^-T: its 'whitened' sample is neither centred nor whitened. Here
    the mean is subtracted first, as the method describes.
    """
    x = acts.astype(np.float64)
    mu = x.mean(0)  # (d,)
    C = np.cov(x, rowvar=False) + ridge * np.eye(x.shape[1])  # (d, d)
    A = np.linalg.cholesky(C)  # (d, d) lower
    u = np.linalg.solve(A, (x - mu).T).T  # (n, d) = (x - mu) A^-T
    return Whitened(u, W.astype(np.float64) @ A, W.astype(np.float64) @ mu + b)


def min_norm_point(G: np.ndarray, c: np.ndarray, target: int) -> np.ndarray:
    """The shortest u (d,) with t the argmax of c + G u (zero if t already is the argmax at u = 0).

    Constraints M u >= r with M_j = G_t - G_j, r_j = c_j - c_t over j != t: a least-distance program,
    solved exactly by Lawson & Hanson's reduction to non-negative least squares (scipy's nnls):
    minimise |E lam - f| over lam >= 0 with E = [M^T; r^T], f = (0, ..., 0, 1); with residual
    rho = E lam - f, u = -rho[:d] / rho[d]. (rho = 0 would mean no such u exists.)
    """
    others = np.arange(len(c)) != target
    M, r = G[target] - G[others], c[others] - c[target]  # (V-1, d), (V-1,)
    if (r <= 0).all():
        return np.zeros(G.shape[1])
    scale = max(float(np.abs(M).max()), float(np.abs(r).max()), 1e-300)  # conditioning only
    E = np.vstack([M.T, r[None, :]]) / scale  # (d + 1, V - 1)
    f = np.zeros(E.shape[0])
    f[-1] = 1.0
    lam, _ = nnls(E, f, maxiter=50 * E.shape[1])
    rho = E @ lam - f  # (d + 1,)
    if abs(rho[-1]) < 1e-14:
        return np.full(G.shape[1], np.inf)  # infeasible: no finite point makes t the argmax
    return -rho[:-1] / rho[-1]  # (d,) scaling E and f's last entry alike leaves u unchanged


def shortest_direction(G: np.ndarray, c: np.ndarray, target: int) -> np.ndarray:
    """Unit direction d of `min_norm_point`; if t is already the argmax at u = 0, the direction that
    raises its tightest margin fastest."""
    u = min_norm_point(G, c, target)
    if np.isfinite(u).all() and np.linalg.norm(u) > 0:
        return u / np.linalg.norm(u)
    others = np.arange(len(c)) != target
    M, r = G[target] - G[others], c[others] - c[target]
    j = int(np.argmax(r))
    return M[j] / max(np.linalg.norm(M[j]), 1e-300)


def qld_from_acts(acts: np.ndarray, W: np.ndarray, b: np.ndarray, target: int) -> float:
    """Quadratic logit decomposition: fraction of the n^2 pairs (b_i, a_j) with t the argmax at b_i + a_j d.

    u_i = a_i d + b_i with a_i = u_i . d and b_i orthogonal to d, presumed independent. For fixed b_i
    the accepted a form an interval (each constraint is linear in a), so the count is a binary search
    in the sorted a: O(n log n + n V). The source's public code counts with the full u_i in place of
    b_i (adding a_j d to a point that already contains a_i d); here b_i is used, as described.
    """
    wh = whiten(acts, W, b)
    d = shortest_direction(wh.G, wh.c, target)  # (dim,)
    a = wh.u @ d  # (n,)
    B = wh.u - a[:, None] * d  # (n, dim) the b_i
    others = np.arange(len(wh.c)) != target
    M, r = wh.G[target] - wh.G[others], wh.c[others] - wh.c[target]  # (V-1, dim), (V-1,)
    slack = B @ M.T - r  # (n, V-1): constraint j holds at b_i + a d iff slack + a * md_j >= 0
    md = M @ d  # (V-1,)
    lo = np.full(len(a), -np.inf)
    hi = np.full(len(a), np.inf)
    pos, neg, zero = md > 1e-12, md < -1e-12, np.abs(md) <= 1e-12
    if pos.any():
        lo = np.max(-slack[:, pos] / md[pos], axis=1)
    if neg.any():
        hi = np.min(-slack[:, neg] / md[neg], axis=1)
    never = (slack[:, zero] < 0).any(axis=1) if zero.any() else np.zeros(len(a), bool)
    s = np.sort(a)
    count = np.searchsorted(s, hi, side="right") - np.searchsorted(s, lo, side="left")  # (n,)
    count = np.where((hi >= lo) & ~never, count, 0)
    return float(count.sum() / len(a) ** 2)


def qld_bruteforce(acts: np.ndarray, W: np.ndarray, b: np.ndarray, target: int) -> float:
    """The same estimate by evaluating all n^2 pairs (reference for tests; O(n^2 V))."""
    wh = whiten(acts, W, b)
    d = shortest_direction(wh.G, wh.c, target)
    a = wh.u @ d
    B = wh.u - a[:, None] * d
    pts = B[:, None, :] + a[None, :, None] * d  # (n, n, dim)
    logits = wh.c + pts @ wh.G.T  # (n, n, V)
    return float((logits.argmax(-1) == target).mean())


def margins(acts: np.ndarray, W: np.ndarray, b: np.ndarray, target: int) -> np.ndarray:
    """logit_t - max_{j != t} logit_j per sample (n,)."""
    logits = acts.astype(np.float64) @ W.T.astype(np.float64) + b  # (n, V)
    others = np.delete(logits, target, axis=1)  # (n, V-1)
    return logits[:, target] - others.max(1)


def gld_from_acts(acts: np.ndarray, W: np.ndarray, b: np.ndarray, target: int) -> float:
    """Gaussian logit difference (raw): P(N(mean, std^2) > 0) of the margins' fitted Gaussian.

    The fitted version is the per-method calibration of the experiment (fitted on held-out targets).
    """
    m = margins(acts, W, b, target)
    sd = float(m.std(ddof=1))
    if sd <= 0:
        return float(m.mean() > 0)
    return float(norm.sf(0.0, loc=float(m.mean()), scale=sd))


def unembedding(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(W (V, d), b (V,)) of the model's unembedding, float64 numpy."""
    W = model.unembed.weight.detach().double().numpy()
    b = model.unembed.bias.detach().double().numpy() if model.unembed.bias is not None else np.zeros(len(W))
    return W, b
