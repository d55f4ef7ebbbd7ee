"""FLOPs counted from the operations a computation performs, never timed.

    fc = Flops()
    C = fc.mm(A, B)          # 2·m·k·n
    D = fc.ew(C.exp(), 1)     # one op per element of the result
    fc.total                  # what was spent

A matmul of (m, k) by (k, n) costs 2mkn; an elementwise op, a comparison or one step of a reduction
costs one FLOP per element it touches. Indexing, reshaping and copying are free (they move data, the
convention the published compact-proofs code follows too). Every proof and estimator in
`interplab.explain` threads one counter through its steps, so the figure it reports is the sum of
the operations it actually ran.
"""

from __future__ import annotations

import math

import torch


class Flops:
    """A running FLOP count."""

    def __init__(self) -> None:
        self.total = 0.0

    def add(self, n: float) -> None:
        """Charge `n` FLOPs."""
        self.total += float(n)

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b, charging 2·(batch)·m·k·n."""
        out = a @ b
        k = a.shape[-1]
        self.total += 2.0 * k * out.numel()
        return out

    def ew(self, out: torch.Tensor, ops: float = 1.0) -> torch.Tensor:
        """Charge `ops` FLOPs per element of `out` (the result of an elementwise step) and return it."""
        self.total += float(ops) * out.numel()
        return out

    def reduce(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Charge a reduction of `x` into `out` (one FLOP per element read) and return `out`."""
        self.total += float(x.numel())
        return out


def log10(flops: float) -> float:
    """log10 of a FLOP count (NaN for non-positive counts)."""
    return math.log10(flops) if flops > 0 else math.nan
