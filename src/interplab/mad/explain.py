"""Explanation-based detection: the surprise of an input's activations under what an explanation predicts.

The explanation is heuristic: the trusted inputs' distribution pushed through the network by
Gaussian moment propagation (`interplab.estimate`; see `interplab.mad.propagation`), which predicts a
mean and a covariance at every site without looking at a single trusted activation. An input is
scored by the negative log-likelihood of its activation under that prediction:

    score(x) = ½ [(x - μ)ᵀ Σ⁺ (x - μ) + log det⁺ Σ + r log 2π]

- `explain-cov`: μ, Σ from covariance propagation (Gaussian closure, full covariance);
- `explain-mean`: μ and the variances from mean propagation, every unit presumed independent.
Where the propagated moments equal the empirical ones this is Mahalanobis without shrinkage; the
two differ exactly where the explanation's account of the network departs from its statistics.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from interplab.errors import UserError
from interplab.mad.base import Detector, DetectorSettings, Views, register
from interplab.mad.mahalanobis import Whitener


class ExplainSettings(DetectorSettings):
    rcond: float | None = Field(1e-6, ge=0)
    """Predicted variances below rcond x the largest are dropped (a propagated covariance can be
    singular where the network is); None: d x machine epsilon."""


class _Explain(Detector):
    family = "explanation"
    Settings = ExplainSettings
    estimator: ClassVar[str] = ""

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        states = trusted.explained.get(self.estimator, {})
        if self.site not in states:
            raise UserError(f"detector '{self.name}' needs the distribution that '{self.estimator}' propagation "
                            f"predicts at '{self.site}'; the trusted views carry it for: {', '.join(states) or 'none'}")
        g = states[self.site]
        if g.cov is None:
            self.whitener_ = Whitener.diagonal(g.mean, g.variance, self.settings.rcond)
        else:
            self.whitener_ = Whitener.of(g.mean, g.cov, self.settings.rcond)

    def _score(self, X: torch.Tensor) -> np.ndarray:
        return self.whitener_.nll(X)


@register("explain-cov", help="surprise of the activation under covariance propagation of the trusted inputs")
class ExplainCov(_Explain):
    estimator = "cov"


@register("explain-mean", help="surprise of the activation under mean propagation (independent units)")
class ExplainMean(_Explain):
    estimator = "mean"
