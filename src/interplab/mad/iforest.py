"""Isolation forest (scikit-learn): inputs that few random splits isolate are anomalous.

score(x) = -IsolationForest.score_samples(x). The forest's subsamples are drawn by row index, so the
trusted rows are first put in canonical order (without it the fit would depend on their order).
Every tree draws `max_samples` rows, so the forest never reads more than n_estimators x max_samples
distinct rows: it is fitted on a random pool of that many rows (all of them when there are fewer),
drawn from the canonical order with the detector's seed, which spares scikit-learn a float32 copy of
every trusted row. Each tree's subsample is still a uniformly random subset of the trusted rows.
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
        order = canonical_order(X).numpy()  # (n,)
        pool = min(len(order), s.n_estimators * s.max_samples)
        if pool < len(order):
            order = order[np.random.default_rng(s.seed).permutation(len(order))[:pool]]
        rows = np.take(X.numpy(), order, axis=0).astype(np.float32)  # the forest's own dtype
        self.forest_ = IsolationForest(n_estimators=s.n_estimators, max_samples=min(s.max_samples, len(rows)),
                                       random_state=s.seed).fit(rows)

    def _score(self, X: torch.Tensor) -> np.ndarray:
        return -self.forest_.score_samples(X.numpy().astype(np.float32))
