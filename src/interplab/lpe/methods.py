"""Sampling estimators of a rare event's probability: naive, ITGIS and MHIS (Wu & Hilton 2024).

Cost is counted in forward-pass equivalents of one input sequence: a forward pass is 1, a forward
plus a backward pass is 3. The sequential methods return a trace of (cost so far, estimate so far)
after every batch, so one run at the largest budget also gives the estimate at every smaller budget
(the estimate after the batches that fit in it). Activation extrapolation (QLD, GLD) is in
`extrapolate.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from interplab.lpe.groundtruth import last_logits
from interplab.lpe.problem import Problem


class Trace(NamedTuple):
    """Running estimates of a sequential method: costs (k,) ascending and estimates (k,)."""

    costs: np.ndarray
    estimates: np.ndarray

    def at(self, budget: float) -> tuple[float, float]:
        """(estimate, cost) of the longest prefix within `budget` (0 estimate at cost 0 if none fits)."""
        i = int(np.searchsorted(self.costs, budget, side="right")) - 1
        return (float(self.estimates[i]), float(self.costs[i])) if i >= 0 else (0.0, 0.0)


def naive_from_argmax(top: torch.Tensor, target: int) -> float:
    """Fraction of samples whose argmax is the target (exact mean of Bernoullis: unbiased)."""
    return float((top == target).double().mean())


ITGIS_TEMPERATURE = 0.1
"""ITGIS's T: best of 0.05-2 x {logit, log-prob} x {decay 0.9, running mean} on the tuning distributions
(bench/lpe_tune.py; docs/lpe.md), never on a scored one. The published code's default was 1."""
ITGIS_SCORE = "logit"
"""ITGIS's score, from the same sweep (as published)."""
ITGIS_DECAY = 0.9
"""ITGIS's gradient average, from the same sweep (as published)."""
MHIS_TEMPERATURE = 0.5
"""MHIS's T, from the same sweep (0.1-5)."""

SCORES = ("logit", "logprob")
"""What the importance samplers climb: the target's logit (Wu & Hilton) or its log-probability
(log-softmax: the target logit minus the log-sum-exp of all logits, so raising every logit together
gains nothing). Chosen on the tuning distribution, never on a scored one (see docs/lpe.md)."""


def _target_grad(model: nn.Module, ids: torch.Tensor, target: int, score: str = "logit") -> tuple[torch.Tensor, ...]:
    """Score s (b,), indicator argmax == target (b,), d s / d one-hot (b, L, V): cost 3 per row."""
    onehot = torch.nn.functional.one_hot(ids, model.vocab_size).float().requires_grad_(True)  # (b, L, V)
    with torch.enable_grad():
        logits = model.forward_onehot(onehot)[:, -1]  # (b, V)
        s = logits[:, target] if score == "logit" else torch.log_softmax(logits, -1)[:, target]  # (b,)
        (grad,) = torch.autograd.grad(s.sum(), onehot)  # (b, L, V)
    return s.detach().double(), (logits.detach().argmax(-1) == target), grad.double()


def itgis_trace(problem: Problem, budget: int, seed: int, temperature: float = ITGIS_TEMPERATURE, batch: int = 64,
                score: str = ITGIS_SCORE, decay: float = ITGIS_DECAY,
                probe: Callable[[dict], None] | None = None) -> Trace:
    """Independent token gradient importance sampling (exact and unbiased; see module lpe.md).

    Proposal q_pos(x) ∝ p_pos(x) exp(score[pos, x] / T_i), independent across positions, fixed before
    each batch is drawn; scores <- decay * scores + batch-mean gradient of the score (target logit or
    log-probability) w.r.t. the one-hot input. T_i = T (1 - decay^i) / (1 - decay) for batch i > 0
    (T i when decay = 1: a running mean) and T_0 = 1, so scores / T_i is a weighted mean gradient / T.
    Each sample's term weight * 1[event] has mean P. `probe(stats)` sees every batch (diagnostics).
    """
    gen = torch.Generator().manual_seed(seed)
    p = problem.dists.double()  # (L, V)
    logp = p.log()  # (L, V) -inf off the support
    scores = torch.zeros_like(p)  # (L, V)
    pos = torch.arange(p.shape[0])
    total, n, cost, costs, ests = 0.0, 0, 0, [], []
    i = 0
    while cost + 3 * batch <= budget or (i == 0 and budget >= 3):
        b = min(batch, (budget - cost) // 3)
        T = 1.0 if i == 0 else temperature * _decayed_count(decay, i)
        logq = torch.log_softmax(logp + scores / T, dim=-1)  # (L, V)
        ids = torch.multinomial(logq.exp().float(), b, replacement=True, generator=gen).T  # (b, L)
        s, hit, grad = _target_grad(problem.model, ids, problem.target, score)
        logw = (logp[pos, ids] - logq[pos, ids]).sum(-1)  # (b,) log p(x) / q(x)
        total += float((logw.exp() * hit).sum())
        n, cost, i = n + b, cost + 3 * b, i + 1
        costs.append(cost)
        ests.append(total / n)
        if probe is not None:
            probe({"batch": i - 1, "logq": logq, "logp": logp, "ids": ids, "logw": logw, "hit": hit, "score": s,
                   "tilt": scores / T, "estimate": total / n, "cost": cost})
        scores = decay * scores + grad.mean(0)  # (L, V)
    return Trace(np.array(costs, dtype=float), np.array(ests))


def _decayed_count(decay: float, i: int) -> float:
    """sum_{k<i} decay^k: the total weight of the decayed sum of i batch gradients."""
    return float(i) if decay == 1.0 else (1 - decay**i) / (1 - decay)


def _propose(p_row: torch.Tensor, g_row: torch.Tensor, T: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Sample y ∝ p(y) exp(g[y] / T) per chain: (y (C,), log q (C, V))."""
    logq = torch.log_softmax(p_row.log() + g_row / T, dim=-1)  # (C, V)
    y = torch.multinomial(logq.exp().float(), 1, generator=gen).squeeze(1)  # (C,)
    return y, logq


def mhis_trace(
    problem: Problem, budget: int, seed: int, temperature: float = MHIS_TEMPERATURE, chains: int = 16,
    burn_in: float = 0.25,
    score: str = "logit", probe: Callable[[dict], None] | None = None,
) -> Trace:
    """Metropolis–Hastings importance sampling: consistent, not unbiased (self-normalised).

    Chains target π(x) ∝ p(x) exp(s(x) / T), s the target logit. A move picks a position uniformly and
    proposes y ∝ p_i(y) exp(g_i[y] / T) (g the gradient of s w.r.t. the one-hot at that position);
    the reverse move uses the gradient at the proposed point. The estimate over the kept states
    (the first `burn_in` fraction of each prefix is discarded) is
    sum 1[event] exp(-s/T) / sum exp(-s/T). Every step evaluates C proposals with forward + backward.
    `score` as in `itgis_trace`; `probe(stats)` sees every step (diagnostics).
    """
    gen = torch.Generator().manual_seed(seed)
    model, p, t, T = problem.model, problem.dists.double(), problem.target, temperature
    C = max(1, min(chains, budget // 6))
    x = problem.sample(C, gen)  # (C, L)
    s, hit, g = _target_grad(model, x, t, score)
    cost, rows_s, rows_hit = 3 * C, [], []
    arange = torch.arange(C)
    while cost + 3 * C <= budget:
        i = torch.randint(0, p.shape[0], (C,), generator=gen)  # (C,) position per chain
        y, logq_fwd = _propose(p[i], g[arange, i], T, gen)
        x_new = x.clone()
        x_new[arange, i] = y
        s_new, hit_new, g_new = _target_grad(model, x_new, t, score)
        logq_rev = torch.log_softmax(p[i].log() + g_new[arange, i] / T, dim=-1)  # (C, V)
        log_ratio = (p[i, y].log() - p[i, x[arange, i]].log() + (s_new - s) / T
                     + logq_rev[arange, x[arange, i]] - logq_fwd[arange, y])  # (C,)
        accept = torch.rand(C, generator=gen, dtype=torch.float64).log() < log_ratio  # (C,)
        x = torch.where(accept[:, None], x_new, x)
        s, hit = torch.where(accept, s_new, s), torch.where(accept, hit_new, hit)
        g = torch.where(accept[:, None, None], g_new, g)
        cost += 3 * C
        rows_s.append(s.clone())
        rows_hit.append(hit.clone())
        if probe is not None:
            probe({"step": len(rows_s) - 1, "accept": accept, "hit": hit, "score": s, "cost": cost})
    return _mhis_prefixes(rows_s, rows_hit, T, C, burn_in)


def _mhis_prefixes(rows_s: list, rows_hit: list, T: float, C: int, burn_in: float) -> Trace:
    """The self-normalised estimate after every step k, discarding the first burn_in * k steps."""
    if not rows_s:
        return Trace(np.array([3.0 * C]), np.array([0.0]))
    S = torch.stack(rows_s).numpy()  # (steps, C)
    H = torch.stack(rows_hit).numpy()  # (steps, C)
    logw = -S / T  # (steps, C)
    shift = logw.max()
    w = np.exp(logw - shift)  # (steps, C) common shift cancels in the ratio
    num = np.concatenate([[0.0], np.cumsum((w * H).sum(1))])  # (steps + 1,)
    den = np.concatenate([[0.0], np.cumsum(w.sum(1))])
    k = np.arange(1, len(S) + 1)
    start = np.floor(burn_in * k).astype(int)
    est = (num[k] - num[start]) / np.maximum(den[k] - den[start], 1e-300)
    costs = 3.0 * C * (k + 1)  # initial states plus k steps
    return Trace(costs, np.clip(est, 0.0, 1.0))


@torch.no_grad()
def sample_final(problem: Problem, n: int, seed: int, batch: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """n inputs from D: their final activations before the unembedding (n, d) and argmax (n,); cost n."""
    gen = torch.Generator().manual_seed(seed)
    acts, tops = [], []
    for start in range(0, n, batch):
        ids = problem.sample(min(batch, n - start), gen)  # (b, L)
        h = problem.model.body(problem.model.embed(ids))[:, -1]  # (b, d)
        acts.append(h)
        tops.append(problem.model.unembed(h).argmax(-1))
    return torch.cat(acts), torch.cat(tops)


def naive(problem: Problem, budget: int, seed: int) -> float:
    """Plain Monte Carlo with `budget` forward passes."""
    return naive_from_argmax(sample_final(problem, budget, seed)[1], problem.target)


__all__ = ["Trace", "itgis_trace", "last_logits", "mhis_trace", "naive", "naive_from_argmax", "sample_final"]
