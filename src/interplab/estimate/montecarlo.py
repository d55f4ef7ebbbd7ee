"""Monte Carlo: the baseline every estimator is charged against, at equal FLOPs.

Samples run through the op list in chunks (bounded memory for 2^22 samples and more); per-site
sums and sums of squares are accumulated in float64. FLOPs: the forward pass (2·out·in per sample
per linear layer, the nonlinearity's cost per unit), drawing the inputs (d per sample, plus 2·d²
for a correlated Gaussian), and the running sum (1 per unit per sample at each reported site; the sums of squares, kept
for error bars, are not charged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interplab.estimate.gaussian import Gaussian, _cholesky
from interplab.estimate.layers import Op
from interplab.estimate.nonlin import NONLINEARITIES


@dataclass
class SampleStats:
    """Per-site sample means and variances (single-sample) from `n` samples, with the FLOPs spent."""

    means: dict[str, torch.Tensor]
    variances: dict[str, torch.Tensor]
    n: int
    flops: float


def _draw(inputs: Gaussian | torch.Tensor, start: int, m: int, g: torch.Generator, L: torch.Tensor | None,
          dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    if isinstance(inputs, torch.Tensor):
        return inputs[start:start + m].to(dtype), 0.0  # (m, ..., d)
    mean = inputs.mean.to(dtype)
    eps = torch.randn((m, *mean.shape), generator=g, dtype=dtype)  # (m, ..., d)
    if L is None:
        return mean + eps * inputs.std.to(dtype), 2.0 * eps.numel()
    return mean + (eps @ L.transpose(-1, -2)), 2.0 * eps.numel() * (inputs.d + 1)


def _is_diagonal(cov: torch.Tensor) -> bool:
    return bool(torch.equal(cov, torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))))


def run_samples(ops: list[Op], inputs: Gaussian | torch.Tensor, n: int, seed: int = 0,
                chunk: int = 1 << 15, dtype: torch.dtype = torch.float32,
                sites: list[str] | None = None) -> SampleStats:
    """Push n samples (drawn from a Gaussian, or the first n rows of a sample tensor) through `ops`;
    report (and charge the running sums of) every op's output, or only those named in `sites`."""
    if isinstance(inputs, torch.Tensor) and inputs.shape[0] < n:
        n = inputs.shape[0]
    g = torch.Generator().manual_seed(seed)
    L = None
    if isinstance(inputs, Gaussian) and inputs.cov is not None and not _is_diagonal(inputs.cov):
        L = _cholesky(inputs.cov.double()).to(dtype)  # (..., d, d)
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    flops = 0.0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x, f = _draw(inputs, start, m, g, L, dtype)
        flops += f
        for op in ops:
            if op.kind == "linear":
                assert op.W is not None
                o, i = op.W.shape[-2:]
                flops += m * math.prod(x.shape[1:-1]) * (2 * o * i + (o if op.b is not None else 0))
            elif op.kind == "act":
                flops += x.numel() * NONLINEARITIES[op.fn].cost
            x = op.forward(x)  # (m, ..., d)
            if sites is not None and op.name not in sites:
                continue
            xd = x.double()
            s, q = xd.sum(0), xd.square().sum(0)  # (..., d)
            sums[op.name] = sums[op.name] + s if op.name in sums else s
            squares[op.name] = squares[op.name] + q if op.name in squares else q
            flops += x.numel()  # the running sum of the mean (the squares, for error bars, are free)
    means = {k: v / n for k, v in sums.items()}
    variances = {k: (squares[k] / n - means[k].square()).clamp_min(0) * n / max(n - 1, 1) for k in sums}
    return SampleStats(means, variances, n, flops)
