"""SAE-based detection with interplab's TopK sparse autoencoder (`interplab.decompose`, sae-topk).

- `sae-recon`: the squared reconstruction error ||x - SAE(x)||²: activations the trusted dictionary
  cannot express;
- `sae-novelty`: the surprise of the latents that fire, Σ_j 1[z_j(x) > 0] (-log f_j), f_j the
  (smoothed) share of trusted rows on which latent j fires: a latent never or rarely seen on
  trusted data counts heavily (the reference's "latents never active in training", graded).

The SAE trains on the trusted rows in canonical order. Both detectors of one site train the same
SAE, so fits are shared through a small cache keyed by the rows' content and the settings.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch
from pydantic import Field

from interplab.mad.base import Detector, DetectorSettings, Views, canonical_order, register

_FITS: OrderedDict[str, Any] = OrderedDict()
_KEEP = 8


class SAESettings(DetectorSettings):
    k: int = Field(4, ge=1)
    """Active latents per input."""
    expansion: int = Field(4, ge=1)
    """Latents per input dimension."""
    steps: int = Field(300, ge=1)
    """Training steps."""
    batch_size: int = Field(256, ge=2)
    """Rows per step."""
    lr: float = Field(3e-3, gt=0)
    """Adam learning rate."""


def fitted_sae(X: torch.Tensor, s: SAESettings) -> Any:
    """The TopK SAE of these settings trained on the set of rows X (shared between detectors)."""
    from interplab.decompose import create

    rows = X[canonical_order(X)].to(torch.float32).contiguous()  # (n, d)
    opts = {"k": min(s.k, s.expansion * X.shape[1]), "width": s.expansion * X.shape[1], "steps": s.steps,
            "batch_size": s.batch_size, "lr": s.lr, "seed": s.seed}
    key = hashlib.sha256(rows.numpy().tobytes() + repr(sorted(opts.items())).encode()).hexdigest()
    if key not in _FITS:
        sae = create("sae-topk", **opts).fit(rows)
        fires = (sae.transform(rows) > 0).sum(0).to(torch.float64)  # (width,)
        surprise = -torch.log((fires + 0.5) / (len(rows) + 1))  # (width,)
        _FITS[key] = (sae, surprise)
        while len(_FITS) > _KEEP:
            _FITS.popitem(last=False)
    return _FITS[key]


class _SAE(Detector):
    Settings = SAESettings

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        self.sae_, self.surprise_ = fitted_sae(X, self.settings)


@register("sae-recon", help="reconstruction error of a TopK SAE trained on the trusted activations")
class SAERecon(_SAE):
    def _score(self, X: torch.Tensor) -> torch.Tensor:
        x = X.to(torch.float32)
        return (x - self.sae_.forward(x).recon).square().sum(1).to(torch.float64)


@register("sae-novelty", help="surprise of the SAE latents that fire, under their trusted firing rates")
class SAENovelty(_SAE):
    def _score(self, X: torch.Tensor) -> torch.Tensor:
        fires = (self.sae_.transform(X.to(torch.float32)) > 0).to(torch.float64)  # (n, width)
        return fires @ self.surprise_
