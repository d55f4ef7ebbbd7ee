"""`propagate`: push the input distribution through the network as a Gaussian, then integrate the event.

Built from interplab.estimate's public rules (issue 5), composed here for the chartf architecture:
    embedding (exact mean and per-position covariance of independent tokens)
    -> per block: residual(layernorm -> first-order attention), residual(layernorm -> linear -> GELU -> linear)
    -> final layernorm -> the last position's Gaussian N(mu, S) over the unembedding input (d,).
Every step presumes independence across positions and treats the state as Gaussian; layernorm and
attention are first order (see interplab.estimate.rules / .attention): approximate throughout.

The event "t is the argmax of W h + b" for h ~ N(mu, S) is a polyhedron in whitened coordinates
u (h = mu + A u, S + 1e-5 I = A A^T). Its Gaussian probability is integrated by importance sampling
from N(u*, I), u* the polyhedron's point nearest the origin (the dominant point of a Gaussian rare
event), with weights exp(-u.u* + |u*|^2 / 2): accurate to a few per cent at 1e-9 with a few thousand
draws. Those draws touch only the unembedding, not the network; their FLOPs are counted in the cost.
Cost = FLOPs of propagation + integration, divided by the FLOPs of one forward pass of one sequence.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from interplab.lpe.extrapolate import min_norm_point


def _block_rules(state, block: nn.Module):
    from interplab.estimate import attention, rules

    a = block.attn
    d = state.d
    Wqkv, bqkv = a.c_attn.weight.detach().double(), a.c_attn.bias.detach().double()  # (3d, d), (3d,)

    def attn(s):
        s = rules.layernorm(s, block.ln_1.weight.detach(), block.ln_1.bias.detach(), block.ln_1.eps)
        return attention(s, Wqkv[:d], Wqkv[d:2 * d], Wqkv[2 * d:], a.c_proj.weight.detach(), a.n_heads, True,
                         bqkv[:d], bqkv[d:2 * d], bqkv[2 * d:], a.c_proj.bias.detach())

    def mlp(s):
        m = block.mlp
        s = rules.layernorm(s, block.ln_2.weight.detach(), block.ln_2.bias.detach(), block.ln_2.eps)
        s = rules.gelu(rules.linear(s, m.c_fc.weight.detach(), m.c_fc.bias.detach()))
        return rules.linear(s, m.c_proj.weight.detach(), m.c_proj.bias.detach())

    state = rules.residual(state, attn)
    return rules.residual(state, mlp)


def residual_states(model: nn.Module, dists: torch.Tensor, full: bool = True) -> list:
    """The Gaussian residual stream after the embedding and after every block (len n_layers + 1):
    interplab.estimate.Gaussian, mean (L, d), covariance (L, d, d) when `full`, else variances.
    Differentiable in `dists` (no torch.no_grad here), for proposals built from it."""
    from interplab.estimate import embedding

    L = dists.shape[0]
    state = embedding(dists.double(), model.wte.weight.detach().double(), model.wpe.weight.detach()[:L].double(),
                      full=full)
    states = [state]
    for block in model.h:
        states.append(_block_rules(states[-1], block))
    return states


def lens(model: nn.Module, state):
    """The final LayerNorm's rule applied to a residual state (the unembedding input, as a logit lens)."""
    from interplab.estimate import rules

    return rules.layernorm(state, model.ln_f.weight.detach(), model.ln_f.bias.detach(), model.ln_f.eps)


@torch.no_grad()
def final_state(model: nn.Module, dists: torch.Tensor, full: bool = True):
    """Gaussian over the unembedding input at every position: interplab.estimate.Gaussian, mean (L, d);
    `full` tracks each position's covariance (L, d, d), else only variances (mean field)."""
    return lens(model, residual_states(model, dists, full)[-1])


def forward_flops(model: nn.Module, L: int) -> float:
    """FLOPs of one forward pass of one length-L sequence (matmuls and attention; last-position unembed)."""
    d = model.wte.weight.shape[1]
    per_layer = 0.0
    for block in model.h:
        d_mlp = block.mlp.c_fc.out_features
        per_layer += L * (2 * d * 3 * d + 2 * d * d + 4 * d * d_mlp) + 2 * 2 * L * L * d
    return per_layer + 2 * d * model.vocab_size


def gaussian_argmax_probs(mu: np.ndarray, S: np.ndarray, W: np.ndarray, b: np.ndarray, targets: list[int],
                          n: int = 4096, seed: int = 0) -> tuple[np.ndarray, float]:
    """P_{h ~ N(mu, S)}[argmax(W h + b) = t] for each target (importance sampling, see module doc), and
    the FLOPs one target's estimate costs (the shared Cholesky plus that target's integration).

    The FLOPs of the Cholesky, of W A and of the n integration draws are counted from the shapes. The
    term for finding u* (`min_norm_point`: Lawson–Hanson non-negative least squares on a (d+1) x (V-1)
    matrix) is an ESTIMATE, not a count: 50 V^2 d, i.e. an allowance of 50 V passes over that matrix
    (its iteration count depends on the data and is not measured). It is an assumption of the cost,
    not a measurement.
    """
    d, V = len(mu), len(b)
    A = np.linalg.cholesky(S + 1e-5 * np.eye(d))  # (d, d)
    G, c = W @ A, W @ mu + b  # (V, d), (V,)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))  # (n, d) common random numbers for every target
    out = np.zeros(V)
    for t in targets:
        u_star = min_norm_point(G, c, t)  # (d,)
        if not np.isfinite(u_star).all():
            continue  # no point of the space makes t the argmax: probability 0
        u = z + u_star  # (n, d)
        logw = -u @ u_star + 0.5 * u_star @ u_star  # (n,) log N(u; 0, I) / N(u; u*, I)
        hit = (u @ G.T + c).argmax(1) == t  # (n,)
        out[t] = float(np.mean(np.exp(logw) * hit))
    # Counted: Cholesky, W A, the integration draws. Estimated, not counted: the least-distance QP,
    # solved by Lawson-Hanson NNLS (scipy.optimize.nnls) on a (d+1) x (V-1) matrix, allowed 50 V d V.
    flops = d**3 / 3 + 2 * V * d * d + 2 * n * d * V + 4 * n * d + 50 * V * V * d
    return np.clip(out, 0.0, 1.0), float(flops)


def propagate_all(model: nn.Module, dists: torch.Tensor, targets: list[int] | None = None,
                  n: int = 4096, seed: int = 0, full: bool = True) -> tuple[np.ndarray, float]:
    """Estimated P[argmax = t] (V,) for `targets` (default all; others 0) and the cost of one target's
    estimate in forward-pass equivalents."""
    state = final_state(model, dists, full)
    mu = state.mean[-1].numpy()  # (d,)
    S = state.cov[-1].numpy() if state.full else np.diag(state.variance[-1].numpy())  # (d, d)
    W = model.unembed.weight.detach().double().numpy()
    b = model.unembed.bias.detach().double().numpy()
    targets = list(range(len(b))) if targets is None else targets
    probs, flops = gaussian_argmax_probs(mu, S, W, b, targets, n, seed)
    cost = (state.flops + flops) / forward_flops(model, dists.shape[0])
    return probs, float(math.ceil(cost))


def propagate_estimate(problem, full: bool = True, seed: int = 0) -> tuple[float, float]:
    """(estimate, cost) for one problem; the budget enters only through the choice of `full`."""
    probs, cost = propagate_all(problem.model, problem.dists, [problem.target], seed=seed, full=full)
    return float(probs[problem.target]), cost
