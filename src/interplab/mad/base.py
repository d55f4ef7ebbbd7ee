"""The detector contract: fit on trusted data, score new inputs (higher = more anomalous).

    det = mad.create("mahalanobis", site="resid_post.0").fit(trusted)   # trusted: Views
    scores = det.score(test)                                            # (n,) float64

A `Views` holds what any detector may read about a batch of inputs, computed once per batch:
the activation at each site (at the prediction position), the output logits, the gradient of the
model's own answer with respect to each site's activation, and, on a trusted batch, the
distribution an explanation predicts at each site (see `interplab.mad.propagation`). A detector
reads one view of one site (`site="logits"` for the output-only ones).

Conventions (scikit-learn's): `__init__` validates and stores settings, `fit` learns everything
into attributes ending in `_`. A detector's fit is a function of the *set* of trusted rows, never
of their order: detectors whose fit draws random numbers (isolation forest, SAE) first put the rows
in a canonical order (`canonical_order`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch
from pydantic import Field

from interplab.config import Config, build
from interplab.errors import UserError
from interplab.estimate.gaussian import Gaussian
from interplab.registry import Registry

Family = Literal["activations", "explanation", "attribution", "output"]
Source = Literal["acts", "grads", "logits"]
OUTPUT_SITE = "logits"


@dataclass(frozen=True)
class Views:
    """What detectors may read about n inputs."""

    acts: Mapping[str, torch.Tensor]
    """site -> (n, d) float64 activations at the prediction position."""
    logits: torch.Tensor | None = None
    """(n, n_out) float64 output logits of the scored prediction."""
    grads: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """site -> (n, d) float64 gradient of log p(the model's own answer) with respect to the activation."""
    explained: Mapping[str, Mapping[str, Gaussian]] = field(default_factory=dict)
    """estimator ("cov", "mean") -> site -> the distribution that propagating the trusted inputs'
    distribution through the network predicts at that site (trusted views only)."""

    @property
    def n(self) -> int:
        if self.logits is not None:
            return int(self.logits.shape[0])
        return int(next(iter(self.acts.values())).shape[0])

    def take(self, rows: Any) -> Views:
        """The views of a subset (or a reordering) of the rows; `explained` is kept as it is."""
        idx = torch.as_tensor(rows)
        return dataclasses.replace(
            self, acts={k: v[idx] for k, v in self.acts.items()},
            logits=None if self.logits is None else self.logits[idx],
            grads={k: v[idx] for k, v in self.grads.items()},
        )

    def map_acts(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Views:
        """The same views with every site's activations replaced by fn(site, acts)."""
        return dataclasses.replace(self, acts={k: fn(k, v) for k, v in self.acts.items()})


def canonical_order(X: torch.Tensor) -> torch.Tensor:
    """A permutation (n,) that sorts rows by their projection on a fixed random direction.

    Two rows with the same projection are, almost surely, the same row, so the sorted rows do not
    depend on the order they came in: a fit on them is a function of the set of rows.
    """
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(X.shape[1], generator=gen, dtype=torch.float64)  # (d,)
    return torch.argsort(X.to(torch.float64) @ r, stable=True)  # (n,)


class DetectorSettings(Config):
    """Settings every detector takes."""

    site: str = ""
    """The site whose activations (or gradients) the detector reads; "logits" for output-only ones."""
    seed: int = Field(0, ge=0)
    """Seed of any random draw in fit."""


class Detector:
    """Base of every detector: `fit(trusted Views) -> self`, `score(Views) -> (n,)` float64."""

    name: ClassVar[str] = ""
    family: ClassVar[Family] = "activations"
    source: ClassVar[Source] = "acts"
    Settings: ClassVar[type[DetectorSettings]] = DetectorSettings

    def __init__(self, **settings: Any):
        if self.source == "logits":
            settings = {**settings, "site": settings.get("site") or OUTPUT_SITE}
        self.settings = build(self.Settings, settings, where=f" of detector '{self.name}'")
        if not self.settings.site:
            raise UserError(f"detector '{self.name}' needs a site, e.g. create('{self.name}', site='resid_post.0')")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.model_dump().items())
        return f"{type(self).__name__}({args})"

    @property
    def site(self) -> str:
        return self.settings.site

    def read(self, views: Views) -> torch.Tensor:
        """The (n, d) float64 array this detector looks at."""
        if self.site == OUTPUT_SITE or self.source == "logits":
            if views.logits is None:
                raise UserError(f"detector '{self.name}' reads logits but these views have none")
            return views.logits
        table = views.grads if self.source == "grads" else views.acts
        if self.site not in table:
            raise UserError(f"detector '{self.name}' reads site '{self.site}' ({self.source}); these views have: "
                            f"{', '.join(table) or 'none'}")
        return table[self.site]

    def fit(self, trusted: Views) -> Self:
        X = self.read(trusted)
        if X.shape[0] < 2:
            raise UserError(f"detector '{self.name}' needs at least 2 trusted rows, got {X.shape[0]}")
        self._fit(X.to(torch.float64), trusted)
        self.d_ = int(X.shape[1])
        return self

    def score(self, views: Views) -> np.ndarray:
        """Anomaly scores (n,), higher = more anomalous."""
        if not hasattr(self, "d_"):
            raise UserError(f"detector '{self.name}' is not fitted; call fit(trusted) first")
        X = self.read(views)
        if X.shape[1] != self.d_:
            raise UserError(f"detector '{self.name}' was fitted on width {self.d_}, got {X.shape[1]}")
        return np.asarray(self._score(X.to(torch.float64)), dtype=np.float64)

    def _fit(self, X: torch.Tensor, trusted: Views) -> None:
        raise NotImplementedError

    def _score(self, X: torch.Tensor) -> np.ndarray | torch.Tensor:
        raise NotImplementedError


DETECTORS: Registry[type[Detector]] = Registry("detector")


def register(name: str, help: str = "") -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: register a Detector under `name`."""

    def add(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        DETECTORS.add(name, cls, help)
        return cls

    return add


def create(name: str, **settings: Any) -> Detector:
    """A new, unfitted detector: `create("mahalanobis", site="hidden.1", shrinkage="oas")`."""
    return DETECTORS.get(name)(**settings)
