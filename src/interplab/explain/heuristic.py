"""Heuristic (uncertified) estimates of a max-of-k model's accuracy, at a fraction of a proof's cost.

`independence`: the presumption of independence, propagated with interplab's estimators. An input
is summarised by its class (query q, max m, number c of non-max non-query positions); given the
class the non-max tokens are independent and uniform below m (exact for uniform inputs). Writing
the prediction as "output m wins against every o" and clearing the softmax's denominator, the
input is correct when, for every o != m, N_o = Σ_slots e^{score} (value_o - value_m) < 0, a sum of
independent slot terms. Each slot's term gets its exact mean and variance over its token (running
sums over keys, vocab³ in all), presuming also

- the positions of the max copies and of the non-max tokens drawn independently per slot (they are
  a random arrangement, drawn without replacement),
- EVOU[t, o] and EVOU[t, m] uncorrelated over the non-max token t, and PVOU[p, o] and PVOU[p, m]
  over the position p (the sums of their products would cost vocab⁴ and vocab³ n_ctx),

then `interplab.estimate` does the rest: the slots' Gaussian states are added (`rules.add`), the
probability that each N_o < 0 is the Heaviside rule on the Gaussian (`rules.heaviside`), and the
outputs are presumed independent: P(correct | class) = Π_o P(N_o < 0). The estimate is the
class-size-weighted mean.

`sampling`: Monte Carlo over uniformly random inputs through the path tables, given the same FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interplab.estimate import Gaussian, rules
from interplab.explain.flops import Flops
from interplab.explain.paths import Paths, path_logits


@dataclass(frozen=True)
class Estimate:
    """An accuracy estimate with its FLOPs; `class_prob` (vocab_q, vocab_max, n_free + 1) gives the
    estimated P(correct) per (query, max, number of non-max non-query tokens) where available."""

    name: str
    accuracy: float
    flops: float
    class_prob: torch.Tensor | None = None
    n_samples: int = 0


def _running_sums(p: Paths, fc: Flops):
    """Per (q, m) sums over keys t < m, each scaled by exp(-r) with r = max_{t<m} EQKE[q,t]:
    Σ g, Σ g EVOU[t], Σ g², Σ g² EVOU[t], Σ g² EVOU[t]² (g = exp(EQKE[q,t] - r)); and r."""
    V = p.vocab
    E, E2 = p.EVOU, p.EVOU.square()  # (t, o)
    r = torch.full((V,), -math.inf, dtype=torch.float64)
    s1, s2 = torch.zeros(V, dtype=torch.float64), torch.zeros(V, dtype=torch.float64)
    s1E, s2E, s2EE = (torch.zeros(V, V, dtype=torch.float64) for _ in range(3))
    out = {k: torch.zeros(V, V, *shape, dtype=torch.float64) for k, shape in
           [("s1", ()), ("s2", ()), ("s1E", (V,)), ("s2E", (V,)), ("s2EE", (V,))]}
    out["r"] = torch.full((V, V), -math.inf, dtype=torch.float64)
    for m in range(1, V):  # after adding key t = m - 1, the sums are those over t < m
        t = m - 1
        new_r = torch.maximum(r, p.EQKE[:, t])  # (q,)
        old, g = (r - new_r).exp(), (p.EQKE[:, t] - new_r).exp()  # (q,)
        s1, s2 = s1 * old + g, s2 * old.square() + g.square()
        s1E = s1E * old.unsqueeze(1) + g.unsqueeze(1) * E[t]  # (q, o)
        s2E = s2E * old.square().unsqueeze(1) + g.square().unsqueeze(1) * E[t]
        s2EE = s2EE * old.square().unsqueeze(1) + g.square().unsqueeze(1) * E2[t]
        r = new_r
        out["s1"][:, m], out["s2"][:, m], out["r"][:, m] = s1, s2, r
        out["s1E"][:, m], out["s2E"][:, m], out["s2EE"][:, m] = s1E, s2E, s2EE
    fc.add(V * (12 * V + 12 * V * V))
    return out


def independence(p: Paths) -> Estimate:
    """The presumption-of-independence estimate (see the module docstring)."""
    fc = Flops()
    fc.add(p.flops)
    V, n = p.vocab, p.n_ctx
    nf = n - 1
    q, m = (x.flatten() for x in torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij"))
    keep = q <= m
    q, m = q[keep], m[keep]  # (P,) the (query, max) pairs
    max_slot, query, non_max = _slot_states(p, q, m, fc)
    prob = torch.zeros(V, V, nf + 1, dtype=torch.float64)
    for c in range(nf + 1):
        n_max = nf - c
        ok = (q == m) | (n_max > 0)  # the max must sit somewhere
        state = rules.add(rules.add(_times(_rows(max_slot, ok), n_max), _rows(query, ok)),
                          _times(_rows(non_max, ok), c))  # (P_ok, o) N_o
        fc.add(state.flops + 4 * state.mean.numel())
        prob[q[ok], m[ok], c] = _prob_negative(state, m[ok], fc)
    sizes = class_sizes_by_copies(V, n)  # (q, m, c)
    fc.add(2 * prob.numel())
    return Estimate("independence", float((prob * sizes).sum()) / V**n, fc.total, prob)


def _slot_states(p: Paths, q: torch.Tensor, m: torch.Tensor, fc: Flops) -> tuple[Gaussian, Gaussian, Gaussian]:
    """Per (query, max) pair, the state (P, o) of one slot's term of N_o: a max copy, the query, a
    non-max copy, each at a uniformly random non-query position (the query at the last)."""
    V = p.vocab
    rs = _running_sums(p, fc)
    pos = _position_tables(p, fc)

    def col(t: torch.Tensor) -> torch.Tensor:  # (P, o) -> (P, 1): the entry of output m
        return t.gather(1, m.unsqueeze(1))

    top = torch.stack([p.EQKE[q, m], p.EQKE[q, q], rs["r"][q, m]]).amax(0) + p.EQKP[q].amax(1)  # (P,) class scale
    dU = p.EUPU[q] - col(p.EUPU[q])  # (P, o) direct path, centred on m
    P1 = pos["A1"][q] - col(pos["A1"][q])  # (P, o) mean_p π(p) (PVOU[p,o] - PVOU[p,m])
    P2 = pos["A2"][q] - col(pos["A2"][q])  # mean_p π(p)² (PVOU[p,o] - PVOU[p,m])
    cross_pos = pos["A2"][q] * col(pos["A2"][q]) / pos["S2"][q].unsqueeze(1)  # presumed, like `cross` below
    P22 = (pos["A22"][q] - 2 * cross_pos + col(pos["A22"][q])).clamp_min(0)  # mean_p π(p)² (PVOU[p,o] - PVOU[p,m])²
    S1, S2 = pos["S1"][q].unsqueeze(1), pos["S2"][q].unsqueeze(1)  # (P, 1) mean_p π, mean_p π²
    # max copies: token m at a uniformly random non-query position, weight κ_M π(p)
    k_max = (p.EQKE[q, m] - top).exp().unsqueeze(1)  # (P, 1)
    c_max = p.EVOU[m] - col(p.EVOU[m]) + dU  # (P, o)
    ey = k_max * (S1 * c_max + P1)
    ey2 = k_max.square() * (S2 * c_max.square() + 2 * c_max * P2 + P22)
    max_slot = Gaussian(ey, var=(ey2 - ey.square()).clamp_min(0))  # (P, o) one max copy's term
    # the query: token q at the last position, no randomness
    w_q = (p.EQKE[q, q] + p.EQKP[q, -1] - top).exp().unsqueeze(1)  # (P, 1)
    d_last = p.PVOU[-1].unsqueeze(0) - p.PVOU[-1, m].unsqueeze(1)  # (P, o)
    query = Gaussian(w_q * (p.EVOU[q] - col(p.EVOU[q]) + dU + d_last), var=torch.zeros(len(q), V, dtype=torch.float64))
    # non-max copies: a token uniform below m at a uniformly random non-query position
    k_non = ((rs["r"][q, m] - top).exp() / m.clamp_min(1)).nan_to_num(0.0).unsqueeze(1)  # (P, 1)
    s1, s2 = rs["s1"][q, m].unsqueeze(1), rs["s2"][q, m].unsqueeze(1)  # (P, 1)
    s1E, s2E, s2EE = (rs[k][q, m] for k in ("s1E", "s2E", "s2EE"))  # (P, o) each
    a1, a2 = s1E - col(s1E), s2E - col(s2E)  # Σ g (EVOU[t,o] - EVOU[t,m]), Σ g² (...)
    cross = s2E * col(s2E) / s2.clamp_min(1e-300)  # presumed: Σ g² E_o E_m ~ Σ g² E_o · Σ g² E_m / Σ g²
    aa = (s2EE - 2 * cross + col(s2EE)).clamp_min(0)  # Σ g² (EVOU[t,o] - EVOU[t,m])²
    ex = k_non * (S1 * (a1 + dU * s1) + s1 * P1)
    ex2 = k_non * (k_non * m.clamp_min(1).unsqueeze(1)) * (
        S2 * (aa + 2 * dU * a2 + dU.square() * s2) + 2 * (a2 + dU * s2) * P2 + s2 * P22)
    non_max = Gaussian(ex, var=(ex2 - ex.square()).clamp_min(0))  # (P, o) one non-max copy's term
    fc.add(60 * len(q) * V)  # the elementwise steps above, counted by hand
    return max_slot, query, non_max


def _position_tables(p: Paths, fc: Flops) -> dict[str, torch.Tensor]:
    """Means over the non-query positions, per query, of π(p) = exp(EQKP[q,p]) times PVOU terms."""
    nf = p.n_ctx - 1
    pi = p.EQKP[:, :nf].exp()  # (q, nf)
    pv = p.PVOU[:nf]  # (nf, o)
    out = {"S1": pi.mean(1), "S2": pi.square().mean(1), "A1": fc.mm(pi, pv) / nf,
           "A2": fc.mm(pi.square(), pv) / nf, "A22": fc.mm(pi.square(), pv.square()) / nf}
    fc.add(6 * pi.numel())
    return out


def _rows(g: Gaussian, keep: torch.Tensor) -> Gaussian:
    """The states of the rows `keep` (a state per (query, max) pair)."""
    return Gaussian(g.mean[keep], var=g.variance[keep], flops=0.0)


def _times(g: Gaussian, k: int) -> Gaussian:
    """The sum of k independent copies of a state (mean and variance times k)."""
    return Gaussian(g.mean * k, var=g.variance * k, flops=0.0)


def _prob_negative(state: Gaussian, m: torch.Tensor, fc: Flops) -> torch.Tensor:
    """Π_{o != m} P(N_o < 0), presuming the outputs independent. Outputs whose N_o lies 8 standard
    deviations below zero contribute a factor 1 to float precision and skip the Heaviside rule."""
    mu, sd = state.mean, state.variance.sqrt()  # (P, o)
    live = mu > -8 * sd  # (P, o)
    live.scatter_(1, m.unsqueeze(1), False)
    fc.add(3 * mu.numel())
    p_neg = torch.ones_like(mu)
    if bool(live.any()):
        sub = Gaussian(-mu[live], var=state.variance[live])
        p_neg[live] = rules.heaviside(sub).mean
        fc.add(rules.heaviside(sub).flops)
    fc.add(mu.numel())
    return p_neg.prod(1)


def class_sizes_by_copies(vocab: int, n_ctx: int) -> torch.Tensor:
    """Inputs (vocab_q, vocab_max, n_free + 1) with query q, max m and c non-max non-query tokens."""
    from math import comb

    nf = n_ctx - 1
    q, m, c = torch.meshgrid(torch.arange(vocab), torch.arange(vocab), torch.arange(nf + 1), indexing="ij")
    size = torch.tensor([comb(nf, int(x)) for x in range(nf + 1)], dtype=torch.float64)[c] * m.double() ** c
    valid = (q == m) | ((q < m) & (c < nf))
    return torch.where(valid, size, 0.0)


def sampling(p: Paths, flops: float, generator: torch.Generator) -> Estimate:
    """Monte Carlo accuracy over uniform inputs through the path tables, spending `flops` in all
    (the tables included; at least one sample)."""
    V, n = p.vocab, p.n_ctx
    per_sample = 3 * n * V + 2 * V + 6 * n + 1  # scores, softmax, values, weighted sum, argmax, compare
    count = max(1, int((flops - p.flops) // per_sample))
    correct = 0
    for start in range(0, count, 1 << 16):
        tokens = torch.randint(0, V, (min(1 << 16, count - start), n), generator=generator)  # (batch, n)
        logits = path_logits(p, tokens)  # (batch, vocab)
        label = tokens.max(1).values
        wrong = logits.scatter(1, label.unsqueeze(1), -math.inf).amax(1)
        correct += int((logits.gather(1, label.unsqueeze(1)).squeeze(1) > wrong).sum())
    return Estimate("sampling", correct / count, p.flops + count * per_sample, None, count)
