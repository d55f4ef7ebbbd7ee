"""PCA residual: the part of an activation outside the top principal subspace of the trusted rows.

score(x) = ||(x - mean) - V_k V_kᵀ (x - mean)||², V_k the top-k eigenvectors of the trusted
covariance, k fixed or the fewest that explain `variance` of the trusted variance. The same as
`sklearn.decomposition.PCA(k)` followed by `inverse_transform(transform(x))`, from one covariance
pass and one small eigendecomposition.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from interplab.mad.base import Detector, DetectorSettings, Views, register
from interplab.mad.mahalanobis import CHUNK, as_numpy, moments


class PCASettings(DetectorSettings):
    n_components: int | None = Field(None, ge=1)
    """Principal components kept (None: the fewest that explain `variance`)."""
    variance: float = Field(0.9, gt=0, lt=1)
    """Share of the trusted variance the kept components explain, when n_components is None."""


@register("pca-residual", help="squared norm of the activation outside the trusted top-PCA subspace")
class PCAResidual(Detector):
    Settings = PCASettings

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        m = moments(X, fourth_moment=False)
        lam, V = np.linalg.eigh(as_numpy(m.cov))  # ascending
        lam, V = np.clip(lam[::-1], 0, None), V[:, ::-1]  # (d,), (d, d) descending
        k = self.settings.n_components
        if k is None:
            share = np.cumsum(lam) / max(float(lam.sum()), 1e-300)  # (d,)
            k = int((share < self.settings.variance).sum()) + 1
        self.n_components_ = min(k, X.shape[1])
        self.mean_, self.components_ = as_numpy(m.mean), np.ascontiguousarray(V[:, : self.n_components_])

    def _score(self, X: torch.Tensor) -> np.ndarray:
        A, V = as_numpy(X), self.components_  # (n, d), (d, k)
        out = np.empty(A.shape[0])
        for i in range(0, A.shape[0], CHUNK):
            xc = A[i:i + CHUNK] - self.mean_  # (chunk, d)
            r = xc - (xc @ V) @ V.T  # (chunk, d) the part outside the top-k subspace
            out[i:i + CHUNK] = np.einsum("ij,ij->i", r, r)
        return out
