"""Linear baselines: the neuron basis, random directions, PCA and ICA, at a matched budget.

A full-rank linear basis reconstructs exactly, so against an SAE it is only fair at the same number
of active codes per token, `k`. Two ways to spend that budget (`sparsify`):

- `rank`: keep the first k components (by variance) and every token's k signed coefficients.
  Stored with interplab's `linear` architecture.
- `topk`: split each component c into +c and -c, so codes are non-negative like SAE latents, and
  keep each token's k largest codes, i.e. its k largest |coefficients| (Cunningham et al. 2023).
  That is exactly a SAELens `topk` SAE with W_enc = [E, -E], W_dec = [D; -D], which is how it is
  stored (`standard`, ReLU only, when k is None).

Every method centres on the training mean (b_dec = mean) except the neuron basis, whose code is
the activation itself (f = x). Decoder rows are unit norm, so a code is the length of the token's
component along its direction and ranking codes by size ranks them by their share of the token.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from interplab import ui
from interplab.decompose.base import Data, Decomposer, Settings, iter_batches, register
from interplab.decompose.saelens import Codec
from interplab.errors import UserError


class LinearSettings(Settings):
    sparsify: Literal["rank", "topk"] = "rank"
    """How the budget k is enforced: 'rank' keeps the first k components (signed codes); 'topk'
    sign-splits every component and keeps each token's k largest codes (non-negative codes)."""


class Moments:
    """Streaming count, mean and scatter (full or diagonal) in float64, merged batch by batch
    with Chan et al.'s update so that a large mean does not cancel the variance."""

    def __init__(self, full: bool):
        self.full, self.n = full, 0
        self.mean = self.m2 = torch.zeros(0, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)  # (b, d)
        b, mean_b = x.shape[0], x.mean(0)  # (d,)
        xc = x - mean_b  # (b, d)
        m2_b = xc.T @ xc if self.full else xc.pow(2).sum(0)  # (d, d) or (d,)
        if self.n == 0:
            self.n, self.mean, self.m2 = b, mean_b, m2_b
            return
        delta, n = mean_b - self.mean, self.n + b  # (d,)
        cross = torch.outer(delta, delta) if self.full else delta.pow(2)
        self.m2 = self.m2 + m2_b + cross * (self.n * b / n)
        self.mean = self.mean + delta * (b / n)
        self.n = n

    @property
    def cov(self) -> torch.Tensor:
        return self.m2 / max(self.n - 1, 1)  # (d, d) or (d,)


def moments_of(X: Data, full: bool) -> Moments:
    stats = Moments(full)
    for x in iter_batches(X, keep_float64=True):
        stats.add(x)
    if stats.n == 0:
        raise UserError("fit received no activations (every batch was empty)")
    return stats


class LinearDecomposer(Decomposer):
    """Shared by the linear methods: build the Codec from encoder and decoder matrices."""

    Settings = LinearSettings

    def _n_keep(self, available: int) -> int:
        """How many components the codec holds: the first k under `rank`, all under `topk`."""
        k, s = self.settings.k, self.settings
        return min(k, available) if (s.sparsify == "rank" and k is not None) else available

    def _set_codec(self, W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> None:
        """W_enc (d, m), W_dec (m, d), b_dec (d,) of signed codes -> the sparsified codec_."""
        d, m = W_enc.shape
        if self.settings.sparsify == "rank":
            codec = Codec(d, m, "linear")
        else:
            W_enc = torch.cat([W_enc, -W_enc], dim=1)  # (d, 2m)
            W_dec = torch.cat([W_dec, -W_dec], dim=0)  # (2m, d)
            k = self.settings.k
            codec = Codec(d, 2 * m, "standard" if k is None else "topk", k=k)
        with torch.no_grad():
            codec.W_enc.copy_(W_enc)
            codec.W_dec.copy_(W_dec)
            codec.b_dec.copy_(b_dec)
        self.codec_ = codec.eval()


@register("identity", help="the neuron basis: each code is one coordinate of the activation")
class Identity(LinearDecomposer):
    """f = x. Under `rank` it keeps the k neurons with the largest mean square (the k that leave
    the least error when the others are dropped), in their original order."""

    def fit(self, X: Data) -> Identity:
        stats = moments_of(X, full=False)
        d = stats.mean.shape[0]
        keep = torch.arange(d)
        if self._n_keep(d) < d:
            power = stats.cov * (stats.n - 1) / stats.n + stats.mean.pow(2)  # (d,) E[x_i^2]
            keep = power.topk(self._n_keep(d)).indices.sort().values
        W_dec = torch.eye(d)[keep]  # (m, d)
        self.mean_square_ = (stats.cov * (stats.n - 1) / stats.n + stats.mean.pow(2)).to(torch.float32)
        self._set_codec(W_dec.T.clone(), W_dec, torch.zeros(d))
        return self

    def _extra_state(self) -> dict[str, torch.Tensor]:
        return {"mean_square_": self.mean_square_}


class RandomSettings(LinearSettings):
    width: int | None = Field(default=None, ge=1)
    """Number of random directions (None: d_in)."""
    directions: Literal["orthonormal", "unit"] = "orthonormal"
    """'orthonormal' (needs width <= d_in) or independent unit vectors (any width; codes are the
    least-squares coefficients, through the pseudo-inverse)."""


@register("random", help="random directions: the floor every method must beat")
class Random(LinearDecomposer):
    """Random unit directions centred on the data mean. Under `rank` the first k directions are
    kept (the order is random, so any k are as good)."""

    Settings = RandomSettings

    def fit(self, X: Data) -> Random:
        stats = moments_of(X, full=False)
        d = stats.mean.shape[0]
        s = self.settings
        m = s.width or d
        if s.directions == "orthonormal" and m > d:
            raise UserError(f"random: width={m} orthonormal directions do not fit in d_in={d}; "
                            "set width <= d_in or directions='unit'")
        g = torch.Generator().manual_seed(s.seed)
        if s.directions == "orthonormal":
            q, r = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))  # (d, m)
            W_dec = (q * torch.sign(torch.diagonal(r))).T  # (m, d), Haar-distributed rows
        else:
            W_dec = torch.randn(m, d, generator=g, dtype=torch.float64)  # (m, d)
            W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        W_dec = W_dec[: self._n_keep(m)]  # (m', d)
        W_enc = torch.linalg.pinv(W_dec)  # (d, m') least squares; = W_dec.T when orthonormal
        self._set_codec(W_enc.float(), W_dec.float(), stats.mean.float())
        return self


class PCASettings(LinearSettings):
    n_components: int | None = Field(default=None, ge=1)
    """Principal components computed (None: min(n, d_in)); `rank` then keeps the first k."""


@register("pca", help="principal components of the covariance, sparsified to k")
class PCA(LinearDecomposer):
    """Eigenvectors of the covariance accumulated in float64 over batches (so it streams), in
    order of variance; each sign is set so the largest entry is positive. Matches scikit-learn's
    PCA up to sign."""

    Settings = PCASettings

    def fit(self, X: Data) -> PCA:
        stats = moments_of(X, full=True)
        d = stats.mean.shape[0]
        evals, evecs = torch.linalg.eigh(stats.cov)  # (d,), (d, d) ascending
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        nc = min(self.settings.n_components or d, stats.n, d)
        m = self._n_keep(nc)
        comps = evecs[:, :m].T  # (m, d)
        biggest = comps.abs().argmax(dim=1)  # (m,)
        comps = comps * torch.sign(comps[torch.arange(m), biggest])[:, None]
        total = evals.sum()
        self.explained_variance_ = evals[:m].clone()  # (m,) float64
        self.explained_variance_ratio_ = evals[:m] / total if total > 0 else torch.zeros(m, dtype=torch.float64)
        self.mean_ = stats.mean.clone()  # (d,) float64
        self._set_codec(comps.T.float(), comps.float(), stats.mean.float())
        return self

    def _extra_state(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("explained_variance_", "explained_variance_ratio_", "mean_")}


class ICASettings(LinearSettings):
    n_components: int | None = Field(default=None, ge=1)
    """Independent components computed (None: min(n, d_in)); `rank` then keeps the first k."""
    max_samples: int = Field(default=20_000, ge=2)
    """FastICA holds its data in memory: fit uses at most this many rows."""
    max_iter: int = Field(default=200, ge=1)
    """FastICA iterations before it stops (a warning is shown if it has not converged)."""
    tol: float = Field(default=1e-4, gt=0)
    """FastICA's convergence tolerance."""


@register("ica", help="independent components (FastICA), sparsified to k")
class ICA(LinearDecomposer):
    """scikit-learn's FastICA with unit-variance whitening. Components are ordered by the
    variance they explain (their mixing column's norm) and signed so that each code has positive
    skew, since features in activations mostly fire one way."""

    Settings = ICASettings

    def fit(self, X: Data) -> ICA:
        from sklearn.decomposition import FastICA
        from sklearn.exceptions import ConvergenceWarning

        x = self._gather(X)  # (n, d) float64 numpy
        s = self.settings
        nc = min(s.n_components or x.shape[1], x.shape[0], x.shape[1])
        ica = FastICA(nc, whiten="unit-variance", random_state=s.seed, max_iter=s.max_iter, tol=s.tol)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            sources = ica.fit_transform(x)  # (n, nc), unit variance
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            ui.info(f"ica: FastICA did not converge in {s.max_iter} iterations; raise max_iter for a better fit")
        norms = np.linalg.norm(ica.mixing_, axis=0)  # (nc,)
        sign = np.sign(np.mean(sources**3, axis=0))  # (nc,)
        sign[sign == 0] = 1.0
        order = np.argsort(-norms, kind="stable")[: self._n_keep(nc)]
        W_dec = (ica.mixing_ / norms * sign).T[order]  # (m, d) unit rows
        W_enc = (ica.components_.T * norms * sign)[:, order]  # (d, m): codes = sources * norm
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        self._set_codec(t(W_enc), t(W_dec), t(ica.mean_))
        return self

    def _gather(self, X: Data) -> np.ndarray:
        rows, n = [], 0
        for x in iter_batches(X, keep_float64=True):
            rows.append(x[: self.settings.max_samples - n].to(torch.float64))
            n += rows[-1].shape[0]
            if n >= self.settings.max_samples:
                break
        if n < 2:
            raise UserError("ica needs at least 2 activation vectors to fit")
        if n == self.settings.max_samples:
            ui.info(f"ica: fitted on the first {n} rows (max_samples)")
        return torch.cat(rows).numpy()
