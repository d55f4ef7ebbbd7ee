"""Reconstruction and sparsity: FVU, L0, dead and dense fractions, streamed over evaluation batches.

FVU = E||x - x_hat||^2 / (E||x||^2 - ||E x||^2): the summed squared error over the total variance
of the whole evaluation set about its mean, both accumulated in float64. Two published tools got
it wrong; both mistakes are kept here, named as such, so tests can show they differ:

- `fvu_per_token_ratio`: the mean over tokens of ||x_t - x_hat_t||^2 / ||x_t - E x||^2 (SAEBench's
  "legacy" formula). Tokens with little variance get huge ratios, so it is not the FVU.
- `fvu_squared_moment_bug`: E[x_d^2] used where E[x_d] belongs in the denominator, i.e.
  E||x||^2 - sum_d E[x_d^2]^2 (SAELens's bug #659), which is neither variance about the mean nor
  about zero.

A latent "fires" on a token when its code is != 0 (signed codes count both signs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from interplab.metrics.bootstrap import BatchStats, Estimate, Stats, safe_div

DENSE_THRESHOLD = 0.1  # a latent firing on more than this fraction of tokens is "dense"


# --- closed forms on one tensor (float64) -------------------------------------------------------
def fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    """The correct FVU of reconstructions `recon` (n, d) of `x` (n, d), in float64."""
    x, recon = x.double(), recon.double()  # (n, d)
    total = (x - x.mean(0)).pow(2).sum()  # () variance about the mean, times n
    return float((x - recon).pow(2).sum() / total)


def fvu_per_token_ratio(x: torch.Tensor, recon: torch.Tensor) -> float:
    """WRONG (a published mistake): the mean of per-token error ratios. Kept for tests only."""
    x, recon = x.double(), recon.double()  # (n, d)
    per_token = (x - recon).pow(2).sum(1) / (x - x.mean(0)).pow(2).sum(1)  # (n,)
    return float(per_token.mean())


def fvu_squared_moment_bug(x: torch.Tensor, recon: torch.Tensor) -> float:
    """WRONG (a published mistake): E[x_d^2] where E[x_d] belongs in the denominator. Tests only."""
    x, recon = x.double(), recon.double()  # (n, d)
    denominator = x.pow(2).sum(1).mean() - x.pow(2).mean(0).pow(2).sum()  # ()
    return float((x - recon).pow(2).sum(1).mean() / denominator)


def l0(codes: torch.Tensor) -> float:
    """Mean number of non-zero codes per token."""
    return float((codes != 0).sum(1).double().mean())


def dead_fraction(codes: torch.Tensor) -> float:
    """Fraction of latents that never fire on these tokens."""
    return float(((codes != 0).sum(0) == 0).double().mean())


def dense_fraction(codes: torch.Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Fraction of latents that fire on more than `threshold` of these tokens."""
    return float(((codes != 0).double().mean(0) > threshold).double().mean())


# --- pooled statistics (work with leading resample axes) ----------------------------------------
def _fvu(s: Stats) -> np.ndarray:
    total = s["sq"] - (s["sum"] ** 2).sum(-1) / s["n"]  # total variance about the pooled mean, times n
    return safe_div(s["sse"], total)


def _l0(s: Stats) -> np.ndarray:
    return safe_div(s["nnz"], s["n"])


def _dead(s: Stats) -> np.ndarray:
    return (s["fires"] == 0).mean(-1)


def _dense(threshold: float) -> Callable[[Stats], np.ndarray]:
    return lambda s: (s["fires"] > threshold * s["n"][..., None]).mean(-1)


class Reconstruction:
    """Streaming FVU, L0, dead and dense fractions: `update` per evaluation batch, then `result`.

    x is shifted by the first batch's mean before its moments are summed: the variance does not
    change, and a residual stream with a large mean does not lose the variance to cancellation in
    E||x||^2 - ||E x||^2.
    """

    def __init__(self, dense_threshold: float = DENSE_THRESHOLD):
        self.dense_threshold = dense_threshold
        self.stats = BatchStats()
        self._shift: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, recon: torch.Tensor, codes: torch.Tensor) -> None:
        """One evaluation batch: activations x (n, d), reconstructions (n, d), codes (n, m)."""
        x64 = x.detach().double()  # (n, d)
        if self._shift is None:
            self._shift = x64.mean(0)  # (d,)
        xc = x64 - self._shift  # (n, d)
        fires = (codes != 0).sum(0)  # (m,)
        self.stats.add(
            n=x.shape[0],
            sum=xc.sum(0).numpy(),  # (d,)
            sq=float(xc.pow(2).sum()),
            sse=float((x64 - recon.detach().double()).pow(2).sum()),
            nnz=float(fires.sum()),
            fires=fires.double().numpy(),  # (m,)
        )

    def per_batch(self) -> dict[str, np.ndarray]:
        """Each batch's own FVU (about its own mean) and L0: (n_batches,) each."""
        s = self.stats.stacked()
        return {"fvu": _fvu(s), "l0": _l0(s)}

    def result(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Estimate]:
        """fvu, l0, dead_frac, dense_frac pooled over batches, with bootstrap CIs over batches."""
        fns = {"fvu": _fvu, "l0": _l0, "dead_frac": _dead, "dense_frac": _dense(self.dense_threshold)}
        return {name: self.stats.estimate(fn, n_boot, seed, level) for name, fn in fns.items()}
