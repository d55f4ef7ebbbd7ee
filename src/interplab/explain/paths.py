"""The path decomposition of a one-layer, attention-only max-of-k model, in float64.

With n = n_ctx positions, the query at the last one holding token q, and attention weights w over
positions (softmax of the scores), the logits at the last position are exactly

    logits(x) = EUPU[q] + Σ_p w_p (EVOU[x_p] + PVOU[p]),
    score(p, t) = EQKE[q, t] + EQKP[q, p]   (already divided by √d_head)

with EQKE = (W_E + W_pos[-1]) W_Q W_Kᵀ (W_E + mean W_pos)ᵀ / √d_head, EQKP the centred positional
part, EVOU = (W_E + mean W_pos) W_V W_O W_U, PVOU = (W_pos - mean W_pos) W_V W_O W_U and
EUPU = (W_E + W_pos[-1]) W_U (Gross et al. 2024; `shared/reference/proofs.md`). Every proof and the
brute force read the model only through these tables (or, for the subcubic proofs, through the
factors they are products of), computed from the float32 weights in float64: the accuracy they
certify is that of this exact arithmetic model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interplab.explain.flops import Flops
from interplab.subjects.maxofk import MaxOfKModel


@dataclass(frozen=True)
class Weights:
    """A max-of-k model's matrices in float64; W_Q already carries the 1/√d_head of the scores."""

    W_E: torch.Tensor  # (vocab, d_model)
    W_pos: torch.Tensor  # (n_ctx, d_model)
    W_Q: torch.Tensor  # (d_model, d_head)
    W_K: torch.Tensor  # (d_model, d_head)
    W_V: torch.Tensor  # (d_model, d_head)
    W_O: torch.Tensor  # (d_head, d_model)
    W_U: torch.Tensor  # (d_model, vocab)

    @classmethod
    def of(cls, model: MaxOfKModel) -> Weights:
        block = model.blocks[0]
        d = lambda t: t.detach().to(torch.float64)  # noqa: E731
        return cls(d(model.W_E), d(model.W_pos), d(block.W_Q) / math.sqrt(block.W_Q.shape[1]), d(block.W_K),
                   d(block.W_V), d(block.W_O), d(model.W_U))

    @property
    def vocab(self) -> int:
        return int(self.W_E.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.W_pos.shape[0])

    @property
    def n_params(self) -> int:
        return sum(int(t.numel()) for t in (self.W_E, self.W_pos, self.W_Q, self.W_K, self.W_V, self.W_O, self.W_U))


@dataclass(frozen=True)
class Paths:
    """The five path tables (float64) and the FLOPs spent computing them."""

    EQKE: torch.Tensor  # (vocab_q, vocab_k)
    EQKP: torch.Tensor  # (vocab_q, n_ctx)
    EVOU: torch.Tensor  # (vocab_k, vocab_out)
    PVOU: torch.Tensor  # (n_ctx, vocab_out)
    EUPU: torch.Tensor  # (vocab_q, vocab_out)
    flops: float

    @property
    def vocab(self) -> int:
        return int(self.EQKE.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.EQKP.shape[1])


def query_side(w: Weights, fc: Flops) -> torch.Tensor:
    """(W_E + W_pos[-1]) W_Q (vocab, d_head): what each query token asks for."""
    return fc.mm(fc.ew(w.W_E + w.W_pos[-1]), w.W_Q)


def key_side(w: Weights, fc: Flops) -> tuple[torch.Tensor, torch.Tensor]:
    """Token keys (W_E + mean W_pos) W_K (vocab, d_head) and centred positional keys (n_ctx, d_head)."""
    mean_pos = fc.reduce(w.W_pos, w.W_pos.mean(0))  # (d_model,)
    keys = fc.mm(fc.ew(w.W_E + mean_pos), w.W_K)  # (vocab, d_head)
    pos_keys = fc.mm(fc.ew(w.W_pos - mean_pos), w.W_K)  # (n_ctx, d_head)
    return keys, pos_keys


def ov_tables(w: Weights, fc: Flops) -> tuple[torch.Tensor, torch.Tensor]:
    """EVOU (vocab, vocab) and PVOU (n_ctx, vocab)."""
    ovu = fc.mm(fc.mm(w.W_V, w.W_O), w.W_U)  # (d_model, vocab)
    mean_pos = fc.reduce(w.W_pos, w.W_pos.mean(0))  # (d_model,)
    evou = fc.mm(fc.ew(w.W_E + mean_pos), ovu)  # (vocab, vocab)
    pvou = fc.mm(fc.ew(w.W_pos - mean_pos), ovu)  # (n_ctx, vocab)
    return evou, pvou


def direct_table(w: Weights, fc: Flops) -> torch.Tensor:
    """EUPU (vocab_q, vocab_out): the query token's direct path to the logits."""
    return fc.mm(fc.ew(w.W_E + w.W_pos[-1]), w.W_U)


def positional_scores(query: torch.Tensor, pos_keys: torch.Tensor, fc: Flops) -> torch.Tensor:
    """EQKP (vocab, n_ctx) from the query side and the centred positional keys."""
    return fc.mm(query, pos_keys.T)


def paths(w: Weights) -> Paths:
    """All five tables, with their FLOPs (about 2·vocab²·(d_head + 2·d_model))."""
    fc = Flops()
    query = query_side(w, fc)
    keys, pos_keys = key_side(w, fc)
    eqke = fc.mm(query, keys.T)  # (vocab, vocab)
    eqkp = positional_scores(query, pos_keys, fc)
    evou, pvou = ov_tables(w, fc)
    eupu = direct_table(w, fc)
    return Paths(eqke, eqkp, evou, pvou, eupu, fc.total)


@torch.no_grad()
def path_logits(p: Paths, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (batch, vocab) of sequences (batch, n_ctx) computed from the tables (the reference's
    per-input formula; used to check the tables against the model and to sample)."""
    q = tokens[:, -1]  # (batch,)
    scores = p.EQKE[q.unsqueeze(1), tokens] + p.EQKP[q]  # (batch, n_ctx)
    w = scores.softmax(-1)  # (batch, n_ctx)
    values = p.EVOU[tokens] + p.PVOU  # (batch, n_ctx, vocab)
    return p.EUPU[q] + (w.unsqueeze(-1) * values).sum(1)  # (batch, vocab)
