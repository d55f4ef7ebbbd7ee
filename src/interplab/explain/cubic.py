"""The cubic proof (Gross et al. 2024): a certified accuracy bound in O(vocab^3 n_ctx^2).

Cases: query token q, max token m >= q, one non-max token k < m and the number c of non-query
positions that hold it (the rest hold m). For each case the proof bounds the largest wrong logit
minus the right one over every ordering of the non-query positions:

1. attention: sort the positional scores EQKP[q, :-1]; put the max copies on the lowest-scoring
   positions (one extreme) or on the highest (the other); max slots score EQKE[q,m], non-max slots
   EQKE[q,k], the query EQKE[q,q] + EQKP[q,-1]; softmax. Over orderings the bound below is a
   linear-fractional function of the max slots' positional mass, so its worst case is at an extreme.
2. values, centred on output m: the positional OV pessimised over positions per output,
   E[m, t] = max_{o != m} (EVOU[t,o] - EVOU[t,m] + max_p (PVOU[p,o] - PVOU[p,m])), and the direct path
   U[q, m] = max_{o != m} (EUPU[q,o] - EUPU[q,m]); the case's bound is
   U[q,m] + max over extremes of (a_m E[m,m] + a_q E[m,q] + a_k E[m,k]).
   Cases without a non-max token (c = 0) take the max over o jointly, as they are only vocab^2.
3. count: for (q, m, c) with N non-max tokens whose case bound is < 0, every input whose c non-max
   positions hold any of those N tokens is correct (the weighted sum is below the worst single-token
   case, so a mix of proven tokens is proven), adding C(n-1, c) N^c inputs.

Unexplained dimension 3·vocab² + 2·n_ctx·vocab (the reference's count: EQKE, EVOU, EUPU, EQKP, PVOU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interplab.explain.flops import Flops
from interplab.explain.paths import Paths
from interplab.explain.proof import Proof, binomial_counts, pessimised_positional_ov, top2_excluding


@dataclass(frozen=True)
class CubicCases:
    """Every case's bound on (largest wrong logit - right logit); < 0 proves the case."""

    triples: torch.Tensor  # (T, 3) long: (q, m, k) with q <= m, k < m
    margin: torch.Tensor  # (T, n_free) cases with c = 1..n_free copies of k (NaN where impossible)
    margin0: torch.Tensor  # (vocab_q, vocab_max) cases without a non-max token (NaN where q > m)
    flops: float


def triples(vocab: int) -> torch.Tensor:
    """All (q, m, k) with q <= m and k < m, (T, 3) long, in a fixed order."""
    q, m, k = torch.meshgrid(torch.arange(vocab), torch.arange(vocab), torch.arange(vocab), indexing="ij")
    keep = (q <= m) & (k < m)
    return torch.stack([q[keep], m[keep], k[keep]], 1)


def cases(p: Paths) -> CubicCases:
    """The case bounds of the cubic proof, with the FLOPs spent (the path tables included)."""
    fc = Flops()
    fc.add(p.flops)
    V, n = p.vocab, p.n_ctx
    nf = n - 1
    pv = pessimised_positional_ov(p, fc)  # (m, o)
    centred = p.EVOU.unsqueeze(0) - p.EVOU.T.unsqueeze(2)  # (m, t, o) EVOU[t,o] - EVOU[t,m]
    epv = fc.ew(centred + pv.unsqueeze(1), 2)  # (m, t, o)
    epv.diagonal(dim1=0, dim2=2).fill_(-torch.inf)  # exclude o == m
    E = fc.reduce(epv, epv.amax(-1))  # (m, t)
    U = fc.ew(top2_excluding(p.EUPU, fc) - p.EUPU, 1)  # (q, m) U[q,m] = max_{o!=m} EUPU[q,o] - EUPU[q,m]
    sorted_pos = p.EQKP[:, :nf].sort(-1).values  # (q, nf) ascending
    fc.add(V * nf * max(1, nf.bit_length()))
    s_query = p.EQKE.diagonal() + p.EQKP[:, -1]  # (q,)
    T = triples(V)
    q, m, k = T.unbind(1)
    margin = torch.full((len(T), nf), torch.nan, dtype=torch.float64)
    for c in range(1, nf + 1):
        n_max = nf - c  # max copies among the non-query positions
        a_max, a_non, a_q = _extreme_attention(p.EQKE[q, m], p.EQKE[q, k], sorted_pos[q], s_query[q], n_max,
                                               q == m, fc)  # (2, T) each
        bound = U[q, m] + a_max * E[m, m] + a_q * E[m, q] + a_non * E[m, k]  # (2, T)
        fc.add(7 * bound.numel())
        possible = (q == m) | (n_max > 0)  # the max must appear among non-query positions unless q == m
        margin[:, c - 1] = torch.where(possible, bound.amax(0), torch.nan)
    margin0 = _without_nonmax(p, pv, s_query, sorted_pos, fc)
    return CubicCases(T, margin, margin0, fc.total)


def _extreme_attention(s_max, s_non, sorted_pos, s_query, n_max: int, query_is_max, fc: Flops):
    """Post-softmax attention (2, T) on the max slots, the non-max slots and the query, with the max
    copies on the lowest (row 0) or the highest (row 1) positional scores; the query counts as a max
    slot when it holds m."""
    nf = sorted_pos.shape[1]
    slots = torch.arange(nf)
    is_max = torch.stack([slots < n_max, slots >= nf - n_max])  # (2, nf)
    scores = torch.where(is_max.unsqueeze(1), s_max.view(1, -1, 1), s_non.view(1, -1, 1)) + sorted_pos  # (2, T, nf)
    full = torch.cat([scores, s_query.view(1, -1, 1).expand(2, -1, 1)], -1)  # (2, T, nf + 1)
    w = full.softmax(-1)  # (2, T, nf + 1)
    fc.add(5 * full.numel())
    a_max = (w[..., :nf] * is_max.unsqueeze(1)).sum(-1)  # (2, T)
    a_non = (w[..., :nf] * ~is_max.unsqueeze(1)).sum(-1)  # (2, T)
    a_q = w[..., nf]  # (2, T)
    fc.add(4 * w[..., :nf].numel())
    a_max = torch.where(query_is_max, a_max + a_q, a_max)
    a_q = torch.where(query_is_max, torch.zeros_like(a_q), a_q)
    return a_max, a_non, a_q


def _without_nonmax(p: Paths, pv, s_query, sorted_pos, fc: Flops) -> torch.Tensor:
    """Cases with every non-query position holding m (q <= m): exact attention, output pessimised
    jointly over o: max_{o != m} of the whole logit difference (vocab_q, vocab_max)."""
    V = p.vocab
    mass = sorted_pos.exp().sum(-1)  # (q,) positional mass of the non-query positions
    logit_max = p.EQKE + mass.log().unsqueeze(1)  # (q, m) log of the max slots' total weight
    a_max = torch.sigmoid(logit_max - s_query.unsqueeze(1))  # (q, m)
    a_max = torch.where(torch.eye(V, dtype=torch.bool), torch.ones_like(a_max), a_max)  # q == m: all on m
    fc.add(6 * a_max.numel())
    d_eupu = p.EUPU.unsqueeze(1) - p.EUPU.unsqueeze(2)  # (q, m, o) EUPU[q,o] - EUPU[q,m]
    d_max = (p.EVOU - p.EVOU.diagonal().unsqueeze(1)).unsqueeze(0)  # (1, m, o) EVOU[m,o] - EVOU[m,m]
    d_q = p.EVOU.unsqueeze(1) - p.EVOU.unsqueeze(2)  # (q, m, o) EVOU[q,o] - EVOU[q,m]
    total = d_eupu + pv.unsqueeze(0) + a_max.unsqueeze(-1) * d_max + (1 - a_max).unsqueeze(-1) * d_q  # (q, m, o)
    fc.ew(total, 9)
    total.diagonal(dim1=1, dim2=2).fill_(-torch.inf)  # exclude o == m
    out = fc.reduce(total, total.amax(-1))  # (q, m)
    q, m = torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij")
    return torch.where(q <= m, out, torch.nan)


def count(cs: CubicCases, vocab: int, n_ctx: int) -> tuple[int, torch.Tensor]:
    """Inputs proven correct and the certificate (bool (T, n_free) + (vocab, vocab), flattened)."""
    nf = n_ctx - 1
    good = cs.margin < 0  # (T, nf)
    q, m, _ = cs.triples.unbind(1)
    N = torch.zeros(vocab * vocab, nf, dtype=torch.float64)
    N.index_add_(0, q * vocab + m, good.to(torch.float64))  # good non-max tokens per (q, m, c)
    C = binomial_counts(nf)[1:]  # (nf,)
    proven = float((C * N.pow(torch.arange(1, nf + 1, dtype=torch.float64))).sum())
    good0 = cs.margin0 < 0  # (vocab, vocab)
    proven += float(good0.sum())
    claims = torch.cat([good.flatten(), good0.flatten()])
    return int(round(proven)), claims


@torch.no_grad()
def cubic(p: Paths) -> Proof:
    """The cubic proof's bound, FLOPs and unexplained dimension."""
    cs = cases(p)
    proven, claims = count(cs, p.vocab, p.n_ctx)
    total = p.vocab**p.n_ctx
    return Proof("cubic", proven / total, proven, total, cs.flops + 4.0 * cs.margin.numel(),
                 3 * p.vocab**2 + 2 * p.n_ctx * p.vocab, claims,
                 "case (query, max, non-max token, copies): pessimised wrong-minus-right logit < 0")


def case_passes(p: Paths) -> torch.Tensor:
    """The cubic case grid's pass/fail for another model (same layout as `Proof.claims`)."""
    cs = cases(p)
    return torch.cat([(cs.margin < 0).flatten(), (cs.margin0 < 0).flatten()])
