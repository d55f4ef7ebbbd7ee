"""Isolation forest (scikit-learn): inputs that few random splits isolate are anomalous.

score(x) = -IsolationForest.score_samples(x), fitted on the trusted rows in canonical order (the
forest's subsamples are drawn by row index, so without it the fit would depend on the rows' order).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from interplab.mad.base import Detector, DetectorSettings, Views, canonical_order, register


class IForestSettings(DetectorSettings):
    n_estimators: int = Field(100, ge=1)
    """Trees."""
    max_samples: int = Field(256, ge=2)
    """Rows per tree (scikit-learn's default)."""


@register("isolation-forest", help="scikit-learn's isolation forest on the activations")
class IsolationForestDetector(Detector):
    Settings = IForestSettings

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        from sklearn.ensemble import IsolationForest

        s = self.settings
        rows = np.take(X.numpy().astype(np.float32), canonical_order(X).numpy(), axis=0)  # the forest's own dtype
        self.forest_ = IsolationForest(n_estimators=s.n_estimators, max_samples=min(s.max_samples, len(rows)),
                                       random_state=s.seed).fit(rows)

    def _score(self, X: torch.Tensor) -> np.ndarray:
        return -self.forest_.score_samples(X.numpy().astype(np.float32))
