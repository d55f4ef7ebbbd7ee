"""PCA residual: the part of an activation outside the top principal subspace of the trusted rows.

score(x) = ||(x - mean) - V_k V_kᵀ (x - mean)||², V_k the top-k eigenvectors of the trusted
covariance, k fixed or the fewest that explain `variance` of the trusted variance. The same as
`sklearn.decomposition.PCA(k)` followed by `inverse_transform(transform(x))`, from one covariance
pass and one small eigendecomposition.
"""

from __future__ import annotations

import torch
from pydantic import Field

from interplab.mad.base import Detector, DetectorSettings, Views, register
from interplab.mad.mahalanobis import CHUNK, moments


class PCASettings(DetectorSettings):
    n_components: int | None = Field(None, ge=1)
    """Principal components kept (None: the fewest that explain `variance`)."""
    variance: float = Field(0.9, gt=0, lt=1)
    """Share of the trusted variance the kept components explain, when n_components is None."""


@register("pca-residual", help="squared norm of the activation outside the trusted top-PCA subspace")
class PCAResidual(Detector):
    Settings = PCASettings

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        m = moments(X)
        lam, V = torch.linalg.eigh(m.cov)  # ascending
        lam, V = lam.flip(0).clamp_min(0), V.flip(1)  # (d,), (d, d) descending
        k = self.settings.n_components
        if k is None:
            share = lam.cumsum(0) / lam.sum().clamp_min(1e-300)  # (d,)
            k = int((share < self.settings.variance).sum()) + 1
        self.n_components_ = min(k, X.shape[1])
        self.mean_, self.components_ = m.mean, V[:, : self.n_components_]  # (d,), (d, k)

    def _score(self, X: torch.Tensor) -> torch.Tensor:
        out = []
        for part in X.split(CHUNK):
            xc = part - self.mean_  # (chunk, d)
            out.append((xc - (xc @ self.components_) @ self.components_.T).square().sum(1))
        return torch.cat(out)
