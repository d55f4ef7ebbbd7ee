"""What every certified bound returns, and the pieces the proofs share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from interplab.explain.flops import Flops
from interplab.explain.paths import Paths


@dataclass(frozen=True)
class Proof:
    """A certified lower bound on a max-of-k model's accuracy over all vocab^n_ctx inputs.

    `claims` is the certificate: the checks on the weights that passed and that the count rests on
    (a boolean mask over the strategy's fixed case grid), so that the surprise ledger can price
    each one; `prior_rate` re-runs the same checks on another model.
    """

    name: str
    bound: float
    proven: int
    total: int
    flops: float
    unexplained_dim: int
    claims: torch.Tensor = field(repr=False)  # bool over the strategy's case grid
    check: str = ""
    """What one claim asserts, in words (printed in the ledger)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_claims(self) -> int:
        return int(self.claims.sum())


def binomial_counts(n_free: int) -> torch.Tensor:
    """C(n_free, c) for c = 0..n_free, float64."""
    from math import comb

    return torch.tensor([comb(n_free, c) for c in range(n_free + 1)], dtype=torch.float64)


def pessimised_positional_ov(p: Paths, fc: Flops) -> torch.Tensor:
    """PV[m, o] = max_p (PVOU[p, o] - PVOU[p, m]) (vocab_max, vocab_out): the most any position's
    value can favour output o over m, so Σ_p w_p (PVOU[p,o] - PVOU[p,m]) <= PV[m, o] for any weights."""
    diff = p.PVOU.unsqueeze(1) - p.PVOU.unsqueeze(2)  # (n, m, o) PVOU[p,o] - PVOU[p,m]
    return fc.reduce(diff, fc.ew(diff).amax(0))  # (m, o)


def top2_excluding(table: torch.Tensor, fc: Flops) -> torch.Tensor:
    """X[r, m] = max_{o != m} table[r, o] (rows, vocab), from each row's two largest entries."""
    top = table.topk(2, dim=-1)  # (rows, 2)
    fc.add(2 * table.numel())
    cols = torch.arange(table.shape[-1])
    first_is_m = top.indices[:, :1] == cols  # (rows, vocab)
    return torch.where(first_is_m, top.values[:, 1:2], top.values[:, :1])  # (rows, vocab)
