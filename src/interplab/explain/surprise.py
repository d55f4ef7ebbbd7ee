"""Surprise accounting: an explanation's bits plus the bits of the behaviour given it.

An explanation is a ledger of claims about the weights. A claim that a model drawn from the stated
prior satisfies with probability p costs log2(1/p) bits (a fair sign check: 1 bit). The behaviour,
here the correctness of the model on every one of the vocab^n_ctx inputs, then costs the bits of
coding it with the explanation's estimate: Σ_x log2 1/P(observed outcome of x). Where an
explanation says nothing about some inputs beyond a rate, those inputs are coded at their observed
rate plus ½·log2(n + 1) bits for stating it (a two-part code). The total is compared with the bits
in the weights: parameters × the fewest bits per parameter at which quantising keeps the accuracy.

Ledgers here (see `explain.ledgers` for the ones the experiment builds):
- no explanation: no claim; every input coded at the accuracy;
- brute force: one claim per input (correct, or wrong), priced by how often a model from the prior
  gets an input right; nothing left to code;
- a proof: its certificate (the checks that passed and that its count rests on), priced by how often
  models from the prior pass the same checks; the unproven inputs coded at their rate;
- a heuristic estimate: presumptions cost nothing (they are the estimator's default); the inputs
  coded with its per-class probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Line:
    """`count` claims of one kind, each with prior probability `prior`: count·log2(1/prior) bits."""

    what: str
    count: int
    prior: float
    how: str = ""
    """Where the prior comes from."""

    @property
    def bits(self) -> float:
        return 0.0 if self.count == 0 else self.count * -math.log2(self.prior)


@dataclass(frozen=True)
class Ledger:
    """The claims of one explanation and the surprise of the behaviour given it, in bits."""

    explanation: str
    lines: list[Line] = field(default_factory=list)
    behaviour_bits: float = 0.0
    behaviour_how: str = ""

    @property
    def explanation_bits(self) -> float:
        return sum(line.bits for line in self.lines)

    @property
    def total(self) -> float:
        return self.explanation_bits + self.behaviour_bits

    def to_dict(self) -> dict[str, Any]:
        """Every number a reader needs to redo the sums."""
        return {"explanation": self.explanation,
                "lines": [{**asdict(line), "bits": line.bits} for line in self.lines],
                "explanation_bits": self.explanation_bits, "behaviour_bits": self.behaviour_bits,
                "behaviour_how": self.behaviour_how, "total_bits": self.total}

    def render(self) -> str:
        """A plain-text table of the ledger."""
        rows = [f"{self.explanation}: {self.total:,.1f} bits"]
        for line in self.lines:
            rows.append(f"  {line.count:>12,} x {-math.log2(line.prior):8.3f} bits = {line.bits:14,.1f}  {line.what}"
                        + (f" [{line.how}]" if line.how else ""))
        rows.append(f"  {'behaviour given it':>38} = {self.behaviour_bits:14,.1f}  {self.behaviour_how}")
        return "\n".join(rows)


def bernoulli_bits(k: float | torch.Tensor, n: float | torch.Tensor, p: float | torch.Tensor) -> float:
    """Bits to code k successes among n trials each predicted with probability p:
    k·log2(1/p) + (n - k)·log2(1/(1 - p)) (summed over classes when given tensors; 0·log 0 = 0)."""
    k, n, p = (torch.as_tensor(x, dtype=torch.float64) for x in (k, n, p))
    hit = torch.where(k > 0, -k * torch.log2(p), 0.0)
    miss = torch.where(n - k > 0, -(n - k) * torch.log2(1 - p), 0.0)
    return float((hit + miss).sum())


def two_part_bits(k: int, n: int) -> float:
    """Code k successes among n at their own rate, plus ½·log2(n + 1) bits for the rate."""
    if n == 0:
        return 0.0
    return bernoulli_bits(k, n, min(max(k / n, 0.0), 1.0)) + 0.5 * math.log2(n + 1)


def kt_rate(hits: int, trials: int) -> float:
    """The Krichevsky–Trofimov estimate (hits + ½) / (trials + 1): never 0 or 1."""
    return (hits + 0.5) / (trials + 1.0)


def weight_bits(n_params: int, bits_per_param: int) -> float:
    """The bits in the weights: parameters × bits per parameter."""
    return float(n_params * bits_per_param)


def quantise(t: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric uniform quantisation of a whole tensor to 2^bits - 1 levels spanning ±max|t|."""
    scale = float(t.abs().max())
    if scale == 0 or bits >= 32:
        return t.clone()
    levels = (1 << (bits - 1)) - 1
    return (t / scale * levels).round() / levels * scale
