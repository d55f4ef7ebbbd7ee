"""Brute force: the exact accuracy of a max-of-k model over all vocab^n_ctx inputs, batched.

Inputs are enumerated by their label m = max: for each m, the inputs whose first copy of m among
the non-query positions is at position j (the query q <= m, positions before j < m, after j <= m)
form a box, a product of token ranges, and the inputs whose only copy of m is the query form one
more. Within a box every input shares the label, and the logits are a sum of per-position terms:
with e = exp(score - c) (c a per-query constant, so each input's weights are rescaled by the same
positive factor and its argmax is unchanged),

    Z · logits(x) = e_q (val_q + EUPU[q]) + Σ_p e_p[x_p] (EVOU[x_p] + PVOU[p] + EUPU[q]),

so the box's (batch, vocab) logits are built by broadcasting one table per position, one output
plane at a time: an add and a running max per input and output. An input is correct when the label's
logit is strictly above every other (a tie counts as wrong, as in the proofs). Where a per-query
constant could underflow every weight of some input (scores spread by more than 700 within a box,
as in hand-set models with near-infinite score gaps), that box is done with per-input stabilised
softmax weights instead (a slower, equally exact path).

Cost: about 2·vocab^(n_ctx+1) FLOPs (1.07e9 add/max pairs for vocab 64, n_ctx 4), no Python loop
over inputs (loops run over the label, the box and the output plane). Per-class counts
(query, max, which non-query positions hold the max) come out for the surprise ledgers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interplab.explain.flops import Flops
from interplab.explain.paths import Paths

_UNDERFLOW = 700.0  # exp(-700) is still a normal float64


@dataclass(frozen=True)
class BruteForce:
    """The exact accuracy, its FLOPs, and correct counts per (query, max, max positions) class."""

    accuracy: float
    correct: int
    total: int
    flops: float
    unexplained_dim: int
    """vocab^(n_ctx + 1): the whole input-to-logit table (the reference's definition)."""
    class_correct: torch.Tensor  # (vocab_q, vocab_max, 2^(n_ctx-1)) int64
    name: str = "brute-force"

    @property
    def bound(self) -> float:
        return self.accuracy


def class_sizes(vocab: int, n_ctx: int) -> torch.Tensor:
    """Number of inputs (vocab_q, vocab_max, 2^(n_ctx-1)) per class: query q, max m, and the set S of
    non-query positions holding m (bit p set when position p holds m)."""
    n_free = n_ctx - 1
    S = torch.arange(1 << n_free)
    ones = torch.tensor([bin(int(s)).count("1") for s in S])  # (2^n_free,) copies of m among non-query
    m = torch.arange(vocab).view(1, vocab, 1)
    q = torch.arange(vocab).view(vocab, 1, 1)
    size = m.to(torch.float64) ** (n_free - ones).view(1, 1, -1)  # non-max positions take any token < m
    valid = (q < m) & (ones.view(1, 1, -1) > 0) | (q == m)  # q < m needs the max among the others
    return torch.where(valid, size, 0.0).round().to(torch.int64)  # (vocab_q, vocab_max, 2^n_free)


def _boxes(m: int, n_free: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """(queries, token range per non-query position) of every box of label m, empty ones dropped."""
    below, upto, only = torch.arange(m), torch.arange(m + 1), torch.tensor([m])
    out = [(upto, [below] * j + [only] + [upto] * (n_free - 1 - j)) for j in range(n_free)]
    out.append((only, [below] * n_free))
    return [piece for q, r in out if all(len(t) for t in r) and len(q) for piece in _split(q, r)]


def _split(qs: torch.Tensor, ranges: list[torch.Tensor], limit: int = 1 << 20) -> list:
    """Cut a box into boxes of at most `limit` inputs per query along its positions (the largest range,
    which becomes the innermost axis, is left whole), so memory stays bounded at any n_ctx."""
    inner = max(range(len(ranges)), key=lambda i: (len(ranges[i]), i))
    cut = [i for i in range(len(ranges)) if i != inner and len(ranges[i]) > 1]
    if math.prod(len(r) for r in ranges) <= limit or not cut:
        return [(qs, ranges)]
    i = cut[0]
    half = len(ranges[i]) // 2
    return [piece for part in (ranges[i][:half], ranges[i][half:])
            for piece in _split(qs, ranges[:i] + [part] + ranges[i + 1:], limit)]


@torch.no_grad()
def brute_force(p: Paths) -> BruteForce:
    """Exact accuracy of the model given by its path tables, with the FLOPs it took."""
    V, n = p.vocab, p.n_ctx
    n_free = n - 1
    fc = Flops()
    fc.add(p.flops)
    counts = torch.zeros(V, V, 1 << n_free, dtype=torch.int64)
    val_q = (p.EVOU + p.PVOU[-1] + p.EUPU).T  # (out, q) the query's value, direct path folded in
    s_q = p.EQKE.diagonal() + p.EQKP[:, -1]  # (q,) the query's own score
    fc.add(3 * V * V + 2 * V)
    for m in range(V):
        for qs, ranges in _boxes(m, n_free):
            correct, bits = _box(p, m, qs, ranges, val_q, s_q, fc)
            classes = qs.view(-1, *[1] * n_free) * (1 << n_free) + bits  # (q, r_0, ..., r_{n-2})
            hits = torch.bincount(classes.expand(correct.shape).flatten(), weights=correct.flatten().to(torch.float64),
                                  minlength=V << n_free)  # (V * 2^n_free,)
            counts[:, m] += hits.round().to(torch.int64).view(V, -1)
    correct = int(counts.sum())
    return BruteForce(correct / V**n, correct, V**n, fc.total, V ** (n + 1), counts)


_CHUNK = 1 << 15  # inputs per output plane: small enough to stay in cache


def _box(p: Paths, m: int, qs: torch.Tensor, ranges: list[torch.Tensor], val_q: torch.Tensor,
         s_q: torch.Tensor, fc: Flops) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness (q, r_a, ..., r_b) of every input of one box, and its class bits, with the positions
    reordered so that the one with the most tokens is the last (innermost) axis."""
    n_free = len(ranges)
    inner = max(range(n_free), key=lambda i: (len(ranges[i]), i))
    order = [i for i in range(n_free) if i != inner] + [inner]
    scores = [p.EQKE[qs][:, ranges[i]] + p.EQKP[qs, i].unsqueeze(1) for i in order]  # (q, r_i) each
    values = [(p.EVOU[ranges[i]].T.unsqueeze(1) + p.PVOU[i].view(-1, 1, 1) + p.EUPU[qs].T.unsqueeze(2))
              for i in order]  # (out, q, r_i) each
    fc.add(sum(s.numel() * 3 for s in scores) + sum(v.numel() * 2 for v in values))
    sq, vq = s_q[qs], val_q[:, qs]  # (q,), (out, q)
    per_q = math.prod(len(ranges[i]) for i in order)
    step = max(1, _CHUNK // per_q)
    correct = torch.cat([_chunk(p.vocab, m, [s[a:a + step] for s in scores], [v[:, a:a + step] for v in values],
                                sq[a:a + step], vq[:, a:a + step], fc) for a in range(0, len(qs), step)])
    bits = sum((ranges[i] == m).to(torch.int64).view(*[1] * (k + 1), -1, *[1] * (n_free - 1 - k)) << i
               for k, i in enumerate(order))  # (1, ..., r_i, ..., 1) summed: which positions hold m
    return correct, bits


def _chunk(vocab: int, m: int, scores: list[torch.Tensor], values: list[torch.Tensor], sq: torch.Tensor,
           vq: torch.Tensor, fc: Flops) -> torch.Tensor:
    """Correctness of the inputs of a few queries of one box: label plane against the running max."""
    top = torch.stack([sq] + [s.amax(1) for s in scores]).amax(0)  # (q,)
    low = torch.stack([sq] + [s.amin(1) for s in scores]).amax(0)  # (q,) every input's top score is >= this
    if float((top - low).max()) < _UNDERFLOW:
        planes = _shared_scale(scores, values, sq, vq, top, fc)
    else:
        planes = _per_input_scale(scores, values, sq, vq, fc)
    label = planes(m)  # (q, r_a, ..., r_b)
    best_wrong = torch.full(label.shape, -math.inf, dtype=torch.float64)
    tmp = torch.empty(label.shape, dtype=torch.float64)
    for o in range(vocab):
        if o != m:
            torch.maximum(best_wrong, planes(o, out=tmp), out=best_wrong)
    fc.add(2 * (vocab - 1) * label.numel() + label.numel())
    return label > best_wrong


def _axis(t: torch.Tensor, i: int, n_free: int) -> torch.Tensor:
    """(..., q, r_i) -> (..., q, 1, ..., r_i, ..., 1): position i's axis in the box grid."""
    return t.reshape(*t.shape[:-1], *[1] * i, t.shape[-1], *[1] * (n_free - 1 - i))


def _shared_scale(scores, values, sq, vq, top, fc: Flops):
    """Output planes from per-position tables rescaled by one constant per query: the positions but
    the last are summed once into C (out, q, r_0..r_{n-3}, 1), the last stays D (out, q, 1.., r_{n-2})."""
    n_free = len(scores)
    tables = [(s - top.unsqueeze(1)).exp().unsqueeze(0) * v for s, v in zip(scores, values, strict=True)]
    C = ((sq - top).exp() * vq).view(*vq.shape, *[1] * n_free)  # (out, q, 1, ..., 1)
    for i, t in enumerate(tables[:-1]):
        C = C + _axis(t, i, n_free)  # (out, q, r_0, .., r_i, 1, ..)
    D = _axis(tables[-1], n_free - 1, n_free)  # (out, q, 1, ..., 1, r_{n-2})
    fc.add(sum(3 * t.numel() for t in tables) + 3 * vq.numel() + C.numel() * max(1, n_free - 1))

    def planes(o: int, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.add(C[o], D[o], out=out) if out is not None else C[o] + D[o]

    return planes


def _per_input_scale(scores, values, sq, vq, fc: Flops):
    """Output planes with each input's weights stabilised by its own top score (slower, always safe)."""
    n_free = len(scores)
    grid = [_axis(s, i, n_free) for i, s in enumerate(scores)]  # (q, .., r_i, ..) each
    top = sq.view(-1, *[1] * n_free)
    for g in grid:
        top = torch.maximum(top, g)  # (q, r_0, ..., r_{n-2})
    w = [(g - top).exp() for g in grid]  # (q, r_0, ..., r_{n-2}) each
    wq = (sq.view(-1, *[1] * n_free) - top).exp()
    fc.add(top.numel() * (4 * n_free + 2))

    def planes(o: int, out: torch.Tensor | None = None) -> torch.Tensor:
        acc = wq * vq[o].view(-1, *[1] * n_free)
        for i, (wi, v) in enumerate(zip(w, values, strict=True)):
            acc = acc + wi * _axis(v[o], i, n_free)
        fc.add(acc.numel() * (2 * n_free + 1))
        if out is not None:
            out.copy_(acc)
            return out
        return acc

    return planes
