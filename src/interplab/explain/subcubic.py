"""Subcubic proofs: one check per (query, max, copies) instead of one per non-max token.

For query q, max m and c non-max non-query positions, the proof finds the largest j such that every
input whose non-max tokens are all <= j is provably correct, and counts C(n-1, c)·(j+1)^c inputs.
The check for (q, m, c, j) bounds, with every score and value relative to a max slot:

- attention: a non-max key k <= j scores at most EQKE[q,m] - gap(q,m,j) where gap <= min_{k<=j}
  (EQKE[q,m] - EQKE[q,k]); the query's score relative to a max slot lies in [lo, hi]; positions are
  pessimised over orderings (the max copies on the lowest- or the highest-scoring positions);
- values, per token and centred on m: the max token's joint worst output E_max[m], the query's
  E_q[q,m] = max_{o!=m} EVOU[q,o] - EVOU[q,m] + PV[m], every non-max token at most
  W[m,j] = max_{k<=j} (max_{o!=m} EVOU[k,o] - EVOU[k,m]) + PV[m] (PV: the positional OV pessimised),
  and the direct path U[q,m] = max_{o!=m} EUPU[q,o] - EUPU[q,m];
- the logit difference is at most U + (P_M E_max + x E_q + y W) / (P_M + x + y) over the box of
  weights (max mass P_M at either extreme, query weight x in [e^lo, e^hi], non-max mass y in
  [0, e^-gap (T - P_M)]); a linear-fractional function is largest at a vertex, so 8 vertices suffice.

The check is monotone in j (a smaller j raises the gap and lowers W), so j is found by bisection:
O(vocab² n_ctx log vocab) checks. Two strategies differ in where the gap comes from:

- `subcubic`: EQKE computed exactly (vocab²·d_head), gap by a running max over keys;
- `subcubic-rank1`: EQKE never formed. Its top singular pair σ u vᵀ comes from power iterations on
  the factors (vocab·d_head each), the remainder R = EQKE - σ u vᵀ = Q K'ᵀ with K' = (I - v vᵀ) K is
  bounded entry by entry by norms: R[q,m] - R[q,k] <= ||Q_q|| (||K'_m|| + ||K'_k||). So
  gap >= σ u_q (v_m - v_k) - ||Q_q|| (||K'_m|| + max_{k<=j} ||K'_k||), all in vocab·d_head.

Unexplained dimension, following the accounting of the published code (`effective_dimension_estimate`):
EVOU vocab², the direct path's per-query max-difference vocab, the positional OV vocab, EQKP none,
and the attention vocab² (exact EQKE) or 4·vocab (the singular vectors, the query norms and the
remainder key norms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interplab.explain.flops import Flops
from interplab.explain.paths import Paths, Weights, direct_table, key_side, ov_tables, positional_scores, \
    query_side
from interplab.explain.proof import Proof, binomial_counts, pessimised_positional_ov, top2_excluding


@dataclass(frozen=True)
class Tables:
    """Everything one model's subcubic checks read (float64)."""

    gap: object  # callable (q, m, j) -> lower bound on EQKE[q,m] - max_{k<=j} EQKE[q,k]
    rel_lo: torch.Tensor  # (q, m) lower bound on (query score) - (score of a max slot)
    rel_hi: torch.Tensor  # (q, m)
    lpos_lo: torch.Tensor  # (q, n_free + 1) log positional mass of n_max max copies, lowest positions
    lpos_hi: torch.Tensor  # (q, n_free + 1) ... highest positions
    lpos_all: torch.Tensor  # (q,) log total positional mass of the non-query positions
    U: torch.Tensor  # (q, m)
    E_max: torch.Tensor  # (m,)
    E_q: torch.Tensor  # (q, m)
    W: torch.Tensor  # (m, j)
    flops: float


def _values(evou: torch.Tensor, pvou_pess: torch.Tensor, eupu: torch.Tensor, fc: Flops):
    """U (q, m), E_max (m,), E_q (q, m), W (m, j) from the OV and direct tables."""
    V = evou.shape[0]
    off = ~torch.eye(V, dtype=torch.bool)
    pv_max = fc.reduce(pvou_pess, pvou_pess.masked_fill(~off, -math.inf).amax(1))  # (m,)
    own = fc.ew(evou - evou.diagonal().unsqueeze(1) + pvou_pess, 2)  # (m, o) for the max token's own row
    E_max = fc.reduce(own, own.masked_fill(~off, -math.inf).amax(1))  # (m,)
    D = fc.ew(top2_excluding(evou, fc) - evou)  # (k, m) max_{o!=m} EVOU[k,o] - EVOU[k,m]
    E_q = fc.ew(D + pv_max.unsqueeze(0))  # (q, m)
    W = fc.ew(D.cummax(0).values.T + pv_max.unsqueeze(1), 2)  # (m, j)
    U = fc.ew(top2_excluding(eupu, fc) - eupu)  # (q, m)
    return U, E_max, E_q, W


def _positions(eqkp: torch.Tensor, fc: Flops):
    """Log positional mass of the n_max lowest / highest non-query positions, n_max = 0..n_free."""
    nf = eqkp.shape[1] - 1
    s = eqkp[:, :nf].sort(-1).values  # (q, nf)
    neg = torch.full((s.shape[0], 1), -math.inf, dtype=s.dtype)
    lo = torch.cat([neg, s.logcumsumexp(-1)], 1)  # (q, nf + 1)
    hi = torch.cat([neg, s.flip(-1).logcumsumexp(-1)], 1)  # (q, nf + 1)
    fc.add(6 * s.numel())
    return lo, hi, lo[:, -1]


def exact_tables(p: Paths) -> Tables:
    """Tables with the gap from the exact EQKE (the strategy `subcubic`)."""
    fc = Flops()
    fc.add(p.flops)
    prefix = fc.ew(p.EQKE.cummax(1).values)  # (q, j) max_{k<=j} EQKE[q,k]

    def gap(q, m, j):
        return p.EQKE[q, m] - prefix[q, j]

    rel = fc.ew(p.EQKE.diagonal().unsqueeze(1) - p.EQKE + p.EQKP[:, -1:], 2)  # (q, m)
    rel = torch.where(torch.eye(p.vocab, dtype=torch.bool), p.EQKP[:, -1:].expand_as(rel), rel)
    lo, hi, tot = _positions(p.EQKP, fc)
    U, E_max, E_q, W = _values(p.EVOU, pessimised_positional_ov(p, fc), p.EUPU, fc)
    return Tables(gap, rel, rel, lo, hi, tot, U, E_max, E_q, W, fc.total)


def rank1_tables(w: Weights, iterations: int = 8) -> Tables:
    """Tables with the gap from EQKE's rank-1 part and worst-case remainder bounds (`subcubic-rank1`).

    EQKE = Q Kᵀ is never formed. v, its top right singular vector, comes from a few power iterations
    on the factors (any unit v keeps the bound sound; a good one keeps it tight); σu = Q (Kᵀ v)
    exactly, so the remainder is R = Q K'ᵀ with K' = K - v (vᵀ K), and by Cauchy–Schwarz
    |R[q,m] - R[q,k]| <= ||Q_q|| (||K'_m|| + ||K'_k||), |R[q,m]| <= ||Q_q|| ||K'_m||: vocab·d_head work.
    """
    fc = Flops()
    Q = query_side(w, fc)  # (V, h)
    K, K_pos = key_side(w, fc)  # (V, h), (n, h)
    eqkp = positional_scores(Q, K_pos, fc)  # (V, n)
    V = Q.shape[0]
    v = torch.full((V,), V**-0.5, dtype=torch.float64)
    for _ in range(iterations):  # v <- (Q Kᵀ)ᵀ (Q Kᵀ) v, normalised
        v = fc.mm(K, fc.mm(Q.T, fc.mm(Q, fc.mm(K.T, v))))
        v = fc.ew(v / v.norm(), 3)
    su = fc.mm(Q, fc.mm(K.T, v))  # (V,) σ u = Q Kᵀ v exactly
    K_res = fc.ew(K - v.unsqueeze(1) * fc.mm(v, K), 2)  # (V, h) (I - v vᵀ) K
    q_norm = fc.reduce(Q, Q.norm(dim=1)) * (1 + 1e-9)  # (V,) a little slack for rounding
    k_norm = fc.reduce(K_res, K_res.norm(dim=1)) * (1 + 1e-9)  # (V,)
    k_prefix = k_norm.cummax(0).values  # (V,) max_{k<=j} ||K'_k||
    diag = fc.reduce(Q, (Q * K).sum(1))  # (V,) EQKE[q,q]
    vmax, vmin = v.cummax(0).values, v.cummin(0).values  # (V,) running max / min over keys
    fc.add(3 * V)

    def gap(q, m, j):
        low = su[q] * v[m] - torch.maximum(su[q] * vmax[j], su[q] * vmin[j])
        return low - q_norm[q] * (k_norm[m] + k_prefix[j])

    centre = fc.ew(diag.unsqueeze(1) - su.unsqueeze(1) * v.unsqueeze(0) + eqkp[:, -1:], 3)  # (q, m)
    slack = fc.ew(q_norm.unsqueeze(1) * k_norm.unsqueeze(0))  # (q, m) bound on |R[q,m]|
    same = torch.eye(V, dtype=torch.bool)
    lo = torch.where(same, eqkp[:, -1:].expand_as(centre), centre - slack)
    hi = torch.where(same, eqkp[:, -1:].expand_as(centre), centre + slack)
    plo, phi, tot = _positions(eqkp, fc)
    evou, pvou = ov_tables(w, fc)
    eupu = direct_table(w, fc)
    pv = pessimised_positional_ov(Paths(evou, eqkp, evou, pvou, eupu, 0.0), fc)
    U, E_max, E_q, W = _values(evou, pv, eupu, fc)
    return Tables(gap, lo, hi, plo, phi, tot, U, E_max, E_q, W, fc.total)


def holds(t: Tables, q: torch.Tensor, m: torch.Tensor, c: torch.Tensor, j: torch.Tensor, n_free: int,
          fc: Flops) -> torch.Tensor:
    """Whether the check for (q, m, c, j) passes, elementwise over equal-shaped index tensors (c >= 0;
    for c = 0 the non-max mass is zero and j is ignored)."""
    n_max = n_free - c
    is_q_max = q == m
    E_q = torch.where(is_q_max, t.E_max[m], t.E_q[q, m])
    W = t.W[m, j.clamp_min(0)]
    gap = t.gap(q, m, j.clamp_min(0))
    best = torch.full(q.shape, -math.inf, dtype=torch.float64)
    for lpm in (t.lpos_lo[q, n_max], t.lpos_hi[q, n_max]):
        rest = torch.log1p(-torch.exp(lpm - t.lpos_all[q]).clamp(max=1.0)) + t.lpos_all[q]  # log(T - P_M)
        ly_max = torch.where(c > 0, rest - gap, torch.full_like(gap, -math.inf))
        for lx in (t.rel_lo[q, m], t.rel_hi[q, m]):
            for ly in (torch.full_like(gap, -math.inf), ly_max):
                top = torch.maximum(torch.maximum(lpm, lx), ly)  # (…,) normaliser
                wm, wx, wy = (lpm - top).exp(), (lx - top).exp(), (ly - top).exp()
                f = (wm * t.E_max[m] + wx * E_q + wy * W) / (wm + wx + wy)
                best = torch.maximum(best, f)
    fc.add(q.numel() * (12 + 8 * 16))
    return t.U[q, m] + best < 0


def prove(t: Tables, vocab: int, n_ctx: int, fc: Flops) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Inputs proven, the largest proven j per (q, m, c) (-1: none) and the certificate (q, m, c)."""
    nf = n_ctx - 1
    q, m, c = (x.flatten() for x in torch.meshgrid(torch.arange(vocab), torch.arange(vocab),
                                                     torch.arange(nf + 1), indexing="ij"))
    valid = (q <= m) & ((q == m) | (c < nf))
    q, m, c = q[valid], m[valid], c[valid]
    lo = torch.full_like(q, -1)  # largest j known to pass (-1: no token, always true)
    hi = m.clone()  # smallest j known to fail (m: no such token)
    zero = c == 0
    ok0 = holds(t, q[zero], m[zero], c[zero], torch.zeros_like(q[zero]), nf, fc)
    live = ~zero & (hi - lo > 1)
    while bool(live.any()):
        idx = live.nonzero().squeeze(1)
        mid = (lo[idx] + hi[idx]) // 2
        ok = holds(t, q[idx], m[idx], c[idx], mid, nf, fc)
        lo[idx] = torch.where(ok, mid, lo[idx])
        hi[idx] = torch.where(ok, hi[idx], mid)
        live = ~zero & (hi - lo > 1)
    C = binomial_counts(nf)
    count = torch.where(zero, ok0_full(ok0, zero), C[c] * (lo + 1).to(torch.float64) ** c)
    claims_flat = torch.where(zero, ok0_full(ok0, zero) > 0, lo >= 0)
    j_star = torch.full((vocab, vocab, nf + 1), -2, dtype=torch.long)
    j_star[q, m, c] = torch.where(zero, torch.where(claims_flat, 0, -1), lo)
    claims = torch.zeros(vocab, vocab, nf + 1, dtype=torch.bool)
    claims[q, m, c] = claims_flat
    fc.add(4 * q.numel())
    return int(round(float(count.sum()))), j_star, claims


def ok0_full(ok0: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The c = 0 results spread back over all cases (1.0 where the check passed, else 0)."""
    out = torch.zeros(zero.shape, dtype=torch.float64)
    out[zero] = ok0.to(torch.float64)
    return out


def _proof(name: str, t: Tables, vocab: int, n_ctx: int, dim: int) -> Proof:
    fc = Flops()
    fc.add(t.flops)
    proven, j_star, claims = prove(t, vocab, n_ctx, fc)
    total = vocab**n_ctx
    return Proof(name, proven / total, proven, total, fc.total, dim, claims.flatten(),
                 "case (query, max, copies): every non-max token <= j is pessimised below zero",
                 {"j_star": j_star})


@torch.no_grad()
def subcubic(p: Paths) -> Proof:
    """Gap-based proof with the exact EQKE."""
    V = p.vocab
    return _proof("subcubic", exact_tables(p), V, p.n_ctx, 2 * V * V + 2 * V)


@torch.no_grad()
def subcubic_rank1(w: Weights) -> Proof:
    """Gap-based proof with EQKE at rank 1 and a worst-case remainder per query row."""
    V = w.vocab
    return _proof("subcubic-rank1", rank1_tables(w), V, w.n_ctx, V * V + 6 * V)


def claim_passes(t: Tables, j_star: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """Another model's pass/fail on the claims (q, m, c, j*) of a certificate (bool, flattened like
    `Proof.claims`; False where the certificate makes no claim)."""
    V = j_star.shape[0]
    q, m, c = (x.flatten() for x in torch.meshgrid(torch.arange(V), torch.arange(V),
                                                     torch.arange(n_ctx), indexing="ij"))
    j = j_star.flatten()
    use = j >= 0
    out = torch.zeros(q.shape, dtype=torch.bool)
    out[use] = holds(t, q[use], m[use], c[use], j[use], n_ctx - 1, Flops())
    return out
