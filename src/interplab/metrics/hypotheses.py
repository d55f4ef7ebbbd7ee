"""Statistics of the four superposition hypotheses (1a, 1b, 2a, 2b) and their null models.

Pure functions on tensors; definitions follow `reference/superposition.md`. A *feature* is a
direction in the activation (neuron) space with a coefficient per input: `directions` is
(n_features, m), row i is feature i written in the m-neuron basis; `second_moment` (n_features,)
is E[code_i^2] (ground truth codes, or SAE latents as the proxy).

- 1a, neuron polysemanticity: contribution of feature i to neuron j is the activation mass it
  carries, c_ji = E[code_i^2] * w_ji^2 (the second moment, not the variance: a feature's mass
  includes its mean). On a rectified site (ReLU/GELU neurons) only w_ji > 0 counts: a negative
  weight makes the feature switch the neuron off, it never makes it fire, so `rectified=True` uses
  the positive part (exact when features fire one at a time, approximate otherwise).
  PR_j = (sum_i c_ji)^2 / sum_i c_ji^2; summaries: the median PR_j over live neurons (what the
  verdicts test, against 1.5), its log (`median_log_pr`, the privileged-basis comparison) and the
  fraction with PR_j >= 1.5 (the round-1 form, which saturates at 1 in high dimension).
- 1b, feature polysemanticity: PR_i = (sum_j w_ji^2)^2 / sum_j w_ji^4 over neurons j; summaries:
  the median over represented features and the fraction with PR_i >= 1.5.
- 2a, sparsity: p_i = P(code_i != 0); fraction with p_i < 0.5 and the median p_i (of inputs and
  planted codes only: the verdict on a learned representation is the SAE-vs-PCA gap, `fvu_rows`).
- 2b, superposition: features per dimension ||W||_F^2 / m = 1 / D* (ground truth), the count of
  features with ||W_i|| above a threshold per dimension (`represented_per_dimension`), or the FVU
  gain from widening a dictionary (real models, see `fvu_rows`).

Nulls: `gaussian_like` (same mean and covariance), `gaussian_twin` (the same, matched exactly in
the sample), `random_rotation` (Haar) and
`rotation_null` (a 1a/1b statistic averaged over random rotations of the neuron basis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

POLY_THRESHOLD = 1.5  # PR at or above this counts as "more than one"
DUPLICATE_COS = 0.9  # latents with a (signed) cosine of this or more to another one are duplicates


class PolyStats(NamedTuple):
    """Participation ratios of one kind of unit (neurons or features) and their summary."""

    pr: torch.Tensor  # (units,) PR of every unit (NaN where the unit is dead / not represented)
    live: torch.Tensor  # (units,) bool: counted in the statistic
    fraction: float  # fraction of live units with PR >= threshold
    median: float  # median PR over live units


class SparsityStats(NamedTuple):
    p: torch.Tensor  # (n_features,) firing probability
    fraction: float  # fraction of features with p < 0.5
    median: float  # median p


def participation_ratio(c: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """(sum c)^2 / sum c^2 along `dim` for non-negative c (exact); NaN where sum c == 0."""
    c = c.double()
    num = c.sum(dim).square()
    den = c.square().sum(dim)
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, float("nan")))


def _summary(pr: torch.Tensor, live: torch.Tensor, threshold: float) -> PolyStats:
    pr = torch.where(live, pr, torch.full_like(pr, float("nan")))
    kept = pr[live]  # (live,)
    if kept.numel() == 0:
        return PolyStats(pr, live, float("nan"), float("nan"))
    return PolyStats(pr, live, float((kept >= threshold).double().mean()), float(kept.quantile(0.5)))


def neuron_contributions(directions: torch.Tensor, second_moment: torch.Tensor, rectified: bool) -> torch.Tensor:
    """c (m, n_features): activation mass of feature i in neuron j, E[code_i^2] * w_ji^2 (w_ji > 0 only
    when `rectified`)."""
    w = directions.double().clamp(min=0) if rectified else directions.double()  # (n, m)
    return (w.square() * second_moment.double().unsqueeze(1)).T  # (m, n)


def neuron_polysemanticity(
    directions: torch.Tensor,
    second_moment: torch.Tensor,
    rectified: bool,
    threshold: float = POLY_THRESHOLD,
    live_tol: float = 1e-3,
) -> PolyStats:
    """1a. A neuron is live when its total mass exceeds `live_tol` times the largest neuron's."""
    c = neuron_contributions(directions, second_moment, rectified)  # (m, n)
    mass = c.sum(1)  # (m,)
    live = mass > live_tol * mass.max().clamp(min=1e-300)  # (m,)
    return _summary(participation_ratio(c, 1), live, threshold)


def feature_polysemanticity(
    directions: torch.Tensor, threshold: float = POLY_THRESHOLD, represented_tol: float = 0.1
) -> PolyStats:
    """1b. A feature is represented when its norm exceeds `represented_tol` times the largest norm."""
    w2 = directions.double().square()  # (n, m)
    norm = w2.sum(1).sqrt()  # (n,)
    live = norm > represented_tol * norm.max().clamp(min=1e-300)  # (n,)
    return _summary(participation_ratio(w2, 1), live, threshold)


def median_log_pr(stats: PolyStats) -> float:
    """Median of log PR over the live units of `stats` (0 when every unit carries one thing)."""
    kept = stats.pr[stats.live]  # (live,)
    return float(kept.log().quantile(0.5)) if kept.numel() else float("nan")


def represented_per_dimension(W: torch.Tensor, threshold: float) -> float:
    """2b on trained weights W (m, n): features with ||W_i|| > threshold, per hidden dimension."""
    return float((W.double().norm(dim=0) > threshold).double().sum() / W.shape[0])


def firing_probability(codes: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """p_i = fraction of rows with |code_i| > eps: (n_features,) from codes (N, n_features)."""
    return (codes.abs() > eps).double().mean(0)


def sparsity(p: torch.Tensor) -> SparsityStats:
    """2a on firing probabilities p (n_features,); medians average the two middle values."""
    p = p.double()
    return SparsityStats(p, float((p < 0.5).double().mean()), float(p.quantile(0.5)))


def features_per_dimension(W: torch.Tensor) -> float:
    """2b ground truth: ||W||_F^2 / m = 1 / D* for W (m, n) (the paper's soft count of features per dim)."""
    return float(W.double().square().sum() / W.shape[0])


def dims_per_feature(W: torch.Tensor) -> float:
    """D* = m / ||W||_F^2 for W (m, n)."""
    return float(W.shape[0] / W.double().square().sum().clamp(min=1e-300))


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 for W (m, n); 0 for a feature that is not learned."""
    W = W.double()
    norm = W.norm(dim=0)  # (n,)
    hat = W / norm.clamp(min=1e-12)  # (m, n)
    overlap = (hat.T @ W).square().sum(1)  # (n,) includes j = i
    return torch.where(norm > 1e-6, norm.square() / overlap.clamp(min=1e-300), torch.zeros_like(norm))


def random_rotation(d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-distributed orthogonal matrix (d, d): QR of a Gaussian with the signs of R's diagonal fixed."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # (d, d)


def rotation_null(
    stat: Callable[[torch.Tensor], float], directions: torch.Tensor, n_rotations: int, generator: torch.Generator
) -> torch.Tensor:
    """stat(directions @ Q) for `n_rotations` random rotations Q of the neuron basis: (n_rotations,).

    Rotating the activations x -> x Q rotates every feature direction the same way; a statistic of
    the neuron basis then measures what any basis would show (the "no privileged basis" null).
    """
    d = directions.shape[1]
    out = [stat(directions.double() @ random_rotation(d, generator)) for _ in range(n_rotations)]
    return torch.tensor(out, dtype=torch.float64)


def gaussian_like(x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples (n, d) of the Gaussian with the mean and covariance of rows x (N, d) (float64 moments).

    The covariance is factored by its eigendecomposition (clipping round-off negatives), which also
    handles singular covariances such as post-ReLU features that never fire together.
    """
    x = x.double()
    mean = x.mean(0)  # (d,)
    cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])  # (d, d)
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp(min=0).sqrt().unsqueeze(0)  # (d, d)
    z = torch.randn(n, x.shape[1], generator=generator, dtype=torch.float64)  # (n, d)
    return (mean + z @ root.T).to(x.dtype if x.dtype == torch.float64 else torch.float32)  # (n, d)


class Moments(NamedTuple):
    """Sample mean (d,) and the symmetric square root (d, d) of the sample covariance of some rows."""

    mean: torch.Tensor
    root: torch.Tensor


def sample_moments(x: torch.Tensor) -> Moments:
    """The mean and covariance root of rows x (N, d), float64 (round-off negatives clipped)."""
    x = x.double()
    d = x.shape[1]
    evals, evecs = torch.linalg.eigh(torch.cov(x.T).reshape(d, d))
    return Moments(x.mean(0), (evecs * evals.clamp(min=0).sqrt().unsqueeze(0)) @ evecs.T)


def gaussian_twin(x: torch.Tensor, generator: torch.Generator | None = None,
                  moments: Moments | None = None) -> torch.Tensor:
    """Gaussian rows (N, d) whose sample mean and covariance equal those of x (N, d) exactly.

    `gaussian_like` draws from N(mean, cov) with the moments estimated from x; with N/d small the
    draw's own sample covariance scatters around them (its eigenvalues spread, Marchenko-Pastur), so
    a twin of x is systematically more anisotropic than x. Here a standard normal draw is centred and
    whitened by its own sample covariance (Cholesky) before taking x's moments, so any rank-k linear
    code (PCA) scores exactly alike on x and on its twin and only x's non-Gaussian structure can tell
    them apart. `moments`: x's `sample_moments`, when several twins of x are drawn. Needs N > d;
    otherwise falls back to `gaussian_like`.
    """
    n, d = x.shape
    if n <= d:
        return gaussian_like(x.double(), n, generator)
    m = moments if moments is not None else sample_moments(x)
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)  # (n, d)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))  # (d, d) lower
    z = torch.linalg.solve_triangular(chol, z.T, upper=False).T  # (n, d) sample covariance exactly I
    return m.mean + z @ m.root  # (n, d)


def fvu_rows(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-row squared error and the total variance, so that FVU = err.sum() / total (float64).

    Returns (N, 2): per-row squared error and per-row squared distance to the mean; resampling
    rows and taking `pooled_fvu` keeps FVU a ratio of sums (a per-row ratio would not be the FVU).
    """
    x, recon = x.double(), recon.double()  # (N, d)
    err = (x - recon).square().sum(1)  # (N,)
    total = (x - x.mean(0)).square().sum(1)  # (N,)
    return torch.stack([err, total], 1)  # (N, 2)


def pooled_fvu(rows: torch.Tensor) -> float:
    """FVU from `fvu_rows`'s (N, 2) rows: sum of errors over sum of variance about the mean."""
    return float(rows[:, 0].sum() / rows[:, 1].sum().clamp(min=1e-300))


def pca_reconstruction(train: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """Rank-k PCA of `train` (N, d) applied to `x` (M, d): the best any k linear codes can do on
    Gaussian data, and a function of the covariance alone."""
    train, x = train.double(), x.double()
    mean = train.mean(0)  # (d,)
    centred = train - mean  # (N, d)
    _, evecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    v = evecs[:, -k:]  # (d, k) the top-k principal directions
    return mean + ((x - mean) @ v) @ v.T  # (M, d)


def distinct_live_latents(decoder: torch.Tensor, codes: torch.Tensor, cos_max: float = DUPLICATE_COS) -> torch.Tensor:
    """Mask (k,) of latents that fire on some row of codes (N, k) and whose decoder direction
    (k, d) has cosine < cos_max with every other live latent (of a duplicate pair, the first is kept).

    The cosine is signed, as in the reference's 2b ("max cosine with any other < 0.9"): two latents
    pointing in opposite directions (cos near -1) are distinct features, not duplicates. With
    non-negative codes (sae-topk) they fire on opposite sides of the data, like the paper's
    antipodal pairs, which count as two features in one dimension.
    """
    live = (codes != 0).any(0)  # (k,)
    unit = decoder.double() / decoder.double().norm(dim=1, keepdim=True).clamp(min=1e-12)  # (k, d)
    keep = live.clone()
    cos = unit @ unit.T  # (k, k)
    cos.fill_diagonal_(0)
    dup = (cos >= cos_max) & live.unsqueeze(0) & live.unsqueeze(1)  # (k, k)
    later_dup = torch.triu(dup, diagonal=1).any(0)  # (k,) latent j duplicates an earlier latent
    return keep & ~later_dup
