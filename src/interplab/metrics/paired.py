"""Decompositions compared on the same evaluation batches: pooled statistics and paired replicates.

A comparison of two decompositions (or of one against several refits of another) scores them on the
same held-out batches. Each method's statistic is a function of per-batch sums pooled over all
batches: FVU is the summed squared error over the summed variance about the pooled mean (never a mean
of per-batch FVUs, each about its own batch's mean). Its bootstrap replicates apply the same function
to the sums over resampled batches. When every method is resampled with the same counts
(`boot_counts`), a difference of two methods' replicates is the replicate of their difference: a
paired bootstrap over batches. Since the total variance is common to methods that reconstruct the
same activations, the pooled FVU difference is (SSE_a - SSE_b) / total variance.

    counts = boot_counts(n_batches, n_boot, seed)
    card = Scorecard(truth=True, labels=labels).score(acts, recons, codes, true_codes, norms)
    card.fvu(counts)              # Aspect(value, replicates (n_boot,))
    card.mcc(counts), card.interp(counts, adjusted=True), per_batch_mean(per_batch_values, counts)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from interplab.metrics.bootstrap import resample
from interplab.metrics.groundtruth import GroundTruth, _corr_pairs, _matched_stats
from interplab.metrics.interpretability import Labels, Monosemanticity, _mono, as_sparse
from interplab.metrics.reconstruction import Reconstruction, _fvu


class Aspect(NamedTuple):
    """One method's pooled statistic and its bootstrap replicates over batches."""

    value: float
    replicates: np.ndarray  # (n_boot,)


def pooled_fvu_difference(x: Sequence[torch.Tensor], recon_a: Sequence[torch.Tensor],
                          recon_b: Sequence[torch.Tensor]) -> float:
    """FVU(a) - FVU(b) pooled over batches of activations x (n_b, d) and two reconstructions of them:
    (SSE_a - SSE_b) / sum over all rows of ||x - pooled mean||^2, in float64."""
    xs = torch.cat([t.double() for t in x])  # (n, d)
    total = (xs - xs.mean(0)).pow(2).sum()
    sse = lambda recon: (xs - torch.cat([r.double() for r in recon])).pow(2).sum()  # noqa: E731
    return float((sse(recon_a) - sse(recon_b)) / total)


def per_batch_mean(values: Sequence[float], counts: np.ndarray) -> Aspect:
    """The mean of per-batch values (pooled, for batches of equal size) and its resampled means."""
    v = np.asarray(values, dtype=np.float64)  # (B,)
    return Aspect(float(v.mean()), counts @ v / counts.sum(1))


class Scorecard:
    """Per-batch sums of one decomposition on shared batches: reconstruction, optionally ground-truth
    recovery (true codes given) and label-based interpretability (labels of the rows given)."""

    def __init__(self, truth: bool = False, labels: Labels | None = None):
        self.recon = Reconstruction()
        self.gt = GroundTruth() if truth else None
        self.mono = Monosemanticity(labels) if labels is not None else None

    @torch.no_grad()
    def score(self, acts: Sequence[torch.Tensor], recons: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
              true_codes: Sequence[torch.Tensor] | None = None, norms: np.ndarray | None = None) -> Scorecard:
        """Every batch at once: activations (n_b, d), reconstructions (n_b, d), codes (n_b, m), true
        codes (n_b, K) when `truth`; `norms` (m,): how much of x a unit code writes (mass weights)."""
        signed = any(bool((c < 0).any()) for c in codes)  # split signed codes into +/- latents, as evaluate does
        start = 0
        for b, (x, r, c) in enumerate(zip(acts, recons, codes, strict=True)):
            self.recon.update(x, r, c)
            if self.gt is not None:
                assert true_codes is not None
                self.gt.update(true_codes[b], c)
            if self.mono is not None:
                sparse = as_sparse(c)
                w = np.ones(c.shape[1]) if norms is None else np.asarray(norms, dtype=np.float64)
                if signed:  # every batch split, so latents line up across batches
                    sparse = sp.hstack([sparse.maximum(0), (-sparse).maximum(0)], format="csr")  # (n_b, 2m)
                    w = np.concatenate([w, w])
                self.mono.update(sparse, slice(start, start + c.shape[0]), w)
            start += c.shape[0]
        return self

    def fvu(self, counts: np.ndarray) -> Aspect:
        """Pooled FVU and its replicates."""
        s = self.recon.stats
        return Aspect(s.value(_fvu), resample(s.stacked(), _fvu, counts=counts))

    def per_batch_fvu(self) -> np.ndarray:
        """Each batch's own FVU about its own mean (B,): the round-1 statistic's parts."""
        return self.recon.per_batch()["fvu"]

    def mcc(self, counts: np.ndarray) -> Aspect:
        """Hungarian-matched MCC over all true features; the matching is fixed from all batches."""
        assert self.gt is not None, "mcc needs true codes"
        match = self.gt.match()
        reduced = _matched_stats(self.gt.stats.stacked(), match)
        k = len(match.latent)
        fn = lambda s: np.abs(_corr_pairs(s)).sum(-1) / k  # noqa: E731
        return Aspect(float(fn({n: v.sum(0) for n, v in reduced.items()})), resample(reduced, fn, counts=counts))

    def interp(self, counts: np.ndarray, adjusted: bool = True) -> Aspect:
        """Mass-weighted best-label F1 over latents, chance-corrected when `adjusted`."""
        assert self.mono is not None, "interp needs labels"
        s = self.mono.stats
        fn = lambda t: _mono(t, adjusted=adjusted)["score"]  # noqa: E731
        return Aspect(s.value(fn), resample(s.stacked(), fn, counts=counts))

