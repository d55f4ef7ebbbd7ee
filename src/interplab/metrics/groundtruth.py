"""Ground-truth recovery on subjects with planted features: MMCS, Hungarian-matched MCC, firing F1.

Definitions (K true features, m learned latents):

- MMCS = mean over the K true features of the largest cosine similarity with any learned
  direction (rows of `components_`). A true feature nothing points at still counts, so a method
  with fewer components than true features is penalised. For signed codes (rank-sparsified
  PCA/ICA/random/identity) a direction and its negative are the same latent, so |cos| is used.
- MCC = mean over all K true features of |Pearson correlation| between the true code and the
  learned code matched to it by the Hungarian algorithm (scipy's linear_sum_assignment on
  |corr|); true features left unmatched (m < K) count 0. Correlations pool all evaluation tokens.
- Firing precision/recall/F1 of each matched pair: the true feature is active when its code is
  != 0; the learned latent fires when its code, times the sign of the matched correlation, is > 0
  (for non-negative SAE codes that is simply code != 0). Unmatched true features count 0.
  f1 is the mean over all K true features of the per-feature F1.

The matching is computed once from all evaluation batches; the CIs of mcc and f1 resample
batches with that matching held fixed (re-running the assignment per resample would cost a
Hungarian solve each), so they are CIs of the matched scores given the matching.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from interplab.metrics.bootstrap import BatchStats, Estimate, Stats, safe_div


def cosine_matrix(true: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (K, m) between true directions (K, d) and learned ones (m, d), float64."""
    t = true.double() / true.double().norm(dim=1, keepdim=True).clamp_min(1e-300)  # (K, d)
    w = learned.double() / learned.double().norm(dim=1, keepdim=True).clamp_min(1e-300)  # (m, d)
    return t @ w.T  # (K, m)


def mmcs(true: torch.Tensor, learned: torch.Tensor, signed: bool = False) -> float:
    """Mean over true features of the max cosine with any learned direction (|cos| when `signed`)."""
    cos = cosine_matrix(true, learned)  # (K, m)
    return float((cos.abs() if signed else cos).max(dim=1).values.mean())


def random_floor(true: torch.Tensor, width: int, n_draws: int = 5, seed: int = 0, signed: bool = False) -> float:
    """MMCS of `width` random unit directions (isotropic Gaussian), averaged over `n_draws` draws:
    the floor every method must beat at that width."""
    g = torch.Generator().manual_seed(seed)
    draws = [mmcs(true, torch.randn(width, true.shape[1], generator=g, dtype=torch.float64), signed)
             for _ in range(n_draws)]
    return float(np.mean(draws))


class Match(NamedTuple):
    """The Hungarian matching of true features to learned latents."""

    latent: np.ndarray  # (K,) matched latent per true feature, -1 if unmatched
    corr: np.ndarray  # (K,) signed correlation of each matched pair (0 if unmatched)


def hungarian(corr: np.ndarray) -> Match:
    """Match true features (rows of corr (K, m)) to latents maximising the summed |corr|."""
    rows, cols = linear_sum_assignment(np.abs(corr), maximize=True)
    latent = np.full(corr.shape[0], -1, dtype=np.int64)
    latent[rows] = cols
    matched = np.zeros(corr.shape[0])
    matched[rows] = corr[rows, cols]
    return Match(latent, matched)


def _corr(s: Stats) -> np.ndarray:
    """Pearson correlation (..., K, m) from pooled sums; 0 where a code is constant."""
    n = s["n"][..., None, None]
    cov = s["yf"] - s["y"][..., :, None] * s["f"][..., None, :] / n  # (..., K, m)
    var_y = s["yy"] - s["y"] ** 2 / s["n"][..., None]  # (..., K)
    var_f = s["ff"] - s["f"] ** 2 / s["n"][..., None]  # (..., m)
    den = np.sqrt(np.clip(var_y, 0, None)[..., :, None] * np.clip(var_f, 0, None)[..., None, :])
    return safe_div(cov, den, fill=0.0)


class GroundTruth:
    """Streaming sums for MCC and firing F1 over evaluation batches: `update`, then `result`.

    Keeps per batch three (K, m) float64 matrices (cross products and the two firing overlaps), so
    memory is 24·K·m bytes per batch: fine for planted dictionaries of a few hundred features.
    """

    def __init__(self) -> None:
        self.stats = BatchStats()

    @torch.no_grad()
    def update(self, true_codes: torch.Tensor, codes: torch.Tensor) -> None:
        """true_codes (n, K) of the planted features, codes (n, m) of the decomposition."""
        y, f = true_codes.double(), codes.double()  # (n, K), (n, m)
        active = (y != 0).double()  # (n, K)
        self.stats.add(
            n=y.shape[0], y=y.sum(0).numpy(), yy=y.pow(2).sum(0).numpy(),
            f=f.sum(0).numpy(), ff=f.pow(2).sum(0).numpy(), yf=(y.T @ f).numpy(),  # (K,), (m,), (K, m)
            active=active.sum(0).numpy(), pos=(f > 0).double().sum(0).numpy(), neg=(f < 0).double().sum(0).numpy(),
            tp_pos=(active.T @ (f > 0).double()).numpy(), tp_neg=(active.T @ (f < 0).double()).numpy(),
        )

    def match(self) -> Match:
        return hungarian(_corr(self.stats.sums()))

    def result(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Estimate]:
        """mcc, f1, firing_precision, firing_recall (means over all true features), with CIs given the matching."""
        m = self.match()
        reduced = _matched_stats(self.stats.stacked(), m)
        k = len(m.latent)
        fns = {
            "mcc": lambda s: np.abs(_corr_pairs(s)).sum(-1) / k,
            "f1": lambda s: safe_div(2 * s["tp"], s["fires"] + s["active"], fill=0.0).sum(-1) / k,
            "firing_precision": lambda s: safe_div(s["tp"], s["fires"], fill=0.0).sum(-1) / k,
            "firing_recall": lambda s: safe_div(s["tp"], s["active"], fill=0.0).sum(-1) / k,
        }
        boot = BatchStats.from_stacked(reduced)
        return {name: boot.estimate(fn, n_boot, seed, level) for name, fn in fns.items()}


def _matched_stats(st: dict[str, np.ndarray], m: Match) -> dict[str, np.ndarray]:
    """Per-batch statistics (B, K) of each true feature and its matched latent (zeros if none)."""
    ok = m.latent >= 0
    j = np.where(ok, m.latent, 0)
    pick = lambda a: np.where(ok, a[:, np.arange(len(j)), j], 0.0)
    take = lambda a: np.where(ok, a[:, j], 0.0)
    sign_pos = m.corr >= 0  # (K,)
    return {
        "n": st["n"], "y": st["y"], "yy": st["yy"], "f": take(st["f"]), "ff": take(st["ff"]),
        "yf": pick(st["yf"]), "active": np.where(ok, st["active"], 0.0),
        "fires": np.where(sign_pos, take(st["pos"]), take(st["neg"])),
        "tp": np.where(sign_pos, pick(st["tp_pos"]), pick(st["tp_neg"])),
    }


def _corr_pairs(s: Stats) -> np.ndarray:
    """Correlation (..., K) of each matched pair from pooled pair sums."""
    n = s["n"][..., None]
    cov = s["yf"] - s["y"] * s["f"] / n
    den = np.sqrt(np.clip(s["yy"] - s["y"] ** 2 / n, 0, None) * np.clip(s["ff"] - s["f"] ** 2 / n, 0, None))
    return safe_div(cov, den, fill=0.0)


def ground_truth_scores(true_codes: torch.Tensor, codes: torch.Tensor) -> dict[str, float]:
    """mcc, f1, firing_precision, firing_recall on one pair of tensors (n, K) and (n, m), no CIs."""
    acc = GroundTruth()
    acc.update(true_codes, codes)
    return {k: v.value for k, v in acc.result(n_boot=0).items()}
