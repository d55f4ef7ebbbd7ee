"""Activations built from a planted dictionary: the ground truth that decompositions should find.

Each sample switches on a few of `n_features` unit directions in `d` dimensions (more features
than dimensions: superposition by construction), with random positive magnitudes:

    activation = Σ_i code_i · feature_i  (+ isotropic Gaussian noise)

`sample` returns the inputs of the model (the codes, plus the noise when there is any) so that
`capture(model, ["hidden"])` gives the activations like for every other subject; use
`sample_activations` to get activations and true codes side by side.

Two companions built from the same settings serve as controls (`kind`):
- "gaussian": a Gaussian with exactly the planted activations' mean and covariance (closed form),
  drawn as mean + z A with z standard normal: no sparse structure, no features to recover;
- "rotation": d dense standard-normal codes through a random d x d rotation. The rows of the
  rotation are its "features", but any rotation of them explains the data as well: they cannot be
  identified by any method.
`readout_threshold` adds a fixed downstream layer that reads each planted feature,
ReLU(<h, feature_i> - threshold); the subject's loss is then the readout's squared distortion,
sum_i (readout_i(h) - readout_i(h_clean))^2 averaged over rows, so splicing a reconstruction in
at `hidden` has a cost on every kind (0 when the reconstruction is exact).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from pydantic import Field, model_validator
from torch import nn

from interplab.config import Config
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.sites import HookPoint

_DICT_SEED_OFFSET = 7_919  # the dictionary's and the groups' generators are distinct from sampling seeds


class SyntheticConfig(Config):
    n_features: int = Field(256, ge=1)
    """Number of planted features (dictionary size)."""
    d: int = Field(64, ge=1)
    """Dimension of the activations."""
    firing: Literal["geometric", "zipf", "uniform"] = "geometric"
    """Shape of the firing probabilities across features (feature 0 fires most often)."""
    mean_active: float = Field(4.0, gt=0)
    """Expected number of active features per sample; probabilities are scaled to hit it (each at most 1)."""
    decay: float = Field(0.99, gt=0, le=1)
    """Geometric firing: p_i ∝ decay^i."""
    zipf_exponent: float = Field(1.0, ge=0)
    """Zipf firing: p_i ∝ (i + 1)^-exponent."""
    magnitude: Literal["uniform", "lognormal", "constant"] = "uniform"
    """Size of an active feature: uniform on [0.5, 1.5], lognormal with mean 1, or always 1."""
    lognormal_sigma: float = Field(0.5, gt=0)
    """Log-scale standard deviation of lognormal magnitudes."""
    correlation: float = Field(0.0, ge=0, lt=1)
    """Correlation of firing within random groups of features (Gaussian copula); 0 = independent."""
    group_size: int = Field(8, ge=1)
    """Features per correlated group (used when correlation > 0)."""
    noise: float = Field(0.0, ge=0)
    """Standard deviation of isotropic Gaussian noise added to the activations."""
    seed: int = 0
    """Seed of the dictionary and of the feature groups."""
    kind: Literal["sparse", "gaussian", "rotation"] = "sparse"
    """'sparse': the planted dictionary; 'gaussian': a Gaussian with its mean and covariance;
    'rotation': d dense Gaussian codes through a random rotation (see the module docstring)."""
    readout_threshold: float | None = Field(None, ge=0)
    """When set, the model ends in ReLU(<h, feature_i> - threshold) for every planted feature and the
    subject's loss is that readout's squared distortion (None: no readout, no loss)."""

    @model_validator(mode="after")
    def _reachable(self) -> SyntheticConfig:
        if self.mean_active > self.n_features:
            raise ValueError(f"mean_active ({self.mean_active}) cannot exceed n_features ({self.n_features})")
        if self.kind == "gaussian" and self.correlation > 0:
            raise ValueError("kind='gaussian' needs correlation = 0 (its covariance is computed in closed form)")
        return self


class SyntheticBatch(NamedTuple):
    """Activations and the true codes that made them."""

    acts: torch.Tensor  # (n, d)
    codes: torch.Tensor  # (n, n_features)


def firing_probabilities(cfg: SyntheticConfig) -> torch.Tensor:
    """p (n_features,) with the configured shape, scaled so that Σ min(1, s·w_i) = mean_active.

    Plain rescaling would push the most frequent features past 1 under steep decays. Water-filling
    instead: with weights sorted descending and the first k clipped to 1, the rest need scale
    s_k = (mean_active - k) / Σ_{i≥k} w_i, and the right k is the first one with s_k·w_k ≤ 1.
    """
    n, m = cfg.n_features, cfg.mean_active
    i = torch.arange(n, dtype=torch.float64)
    if cfg.firing == "geometric":
        w = cfg.decay**i  # (n_features,) descending
    elif cfg.firing == "zipf":
        w = (i + 1) ** -cfg.zipf_exponent
    else:
        w = torch.ones_like(i)
    if m >= n:
        return torch.ones(n)
    tail = w.flip(0).cumsum(0).flip(0)  # (n_features,) Σ_{i≥k} w_i
    scale = (m - i) / tail  # (n_features,)
    k = int(((scale * w <= 1) & (i < m)).nonzero()[0])
    return (scale[k] * w).clamp(max=1).float()


def _dictionary(cfg: SyntheticConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit feature directions (n_features, d) and each feature's copula group (n_features,)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + _DICT_SEED_OFFSET)
    features = torch.randn(cfg.n_features, cfg.d, generator=gen)  # (n_features, d)
    features = features / features.norm(dim=1, keepdim=True)
    n_groups = max(1, -(-cfg.n_features // cfg.group_size))
    groups = torch.randperm(cfg.n_features, generator=gen) % n_groups  # (n_features,)
    return features, groups


class SyntheticModel(nn.Module):
    """codes (batch, n_codes) [+ noise (batch, d)] -> activations (batch, d); site `hidden`.

    Inputs wider than n_codes carry the noise in their last d columns, so the model stays a
    pure function of its input and repeated forward passes agree. With a `readout` (R, d) the
    output is ReLU(h readout^T - threshold) (batch, R) instead of the activations h.
    """

    def __init__(self, features: torch.Tensor, bias: torch.Tensor | None = None,
                 readout: torch.Tensor | None = None, threshold: float = 0.0):
        super().__init__()
        self.register_buffer("features", features)  # (n_codes, d)
        self.register_buffer("bias", torch.zeros(features.shape[1]) if bias is None else bias)  # (d,)
        self.register_buffer("readout", readout)  # (R, d) or None
        self.threshold = threshold
        self.hidden = HookPoint()

    def acts(self, x: torch.Tensor) -> torch.Tensor:
        """The activations (batch, d), computed without the `hidden` hook point (never spliced)."""
        n = self.features.shape[0]
        acts = x[:, :n] @ self.features + self.bias  # (batch, d)
        if x.shape[1] > n:
            acts = acts + x[:, n:]  # (batch, d)
        return acts

    def read(self, h: torch.Tensor) -> torch.Tensor:
        """The downstream readout of activations h (batch, d) -> (batch, R); h itself without one."""
        return h if self.readout is None else torch.relu(h @ self.readout.T - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(self.hidden(self.acts(x)))


def _sample_codes(
    cfg: SyntheticConfig, p: torch.Tensor, groups: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sparse non-negative codes (n, n_features); feature i is active with probability p[i].

    Correlated firing uses a Gaussian copula: z_i = √ρ·g_group(i) + √(1-ρ)·e_i fires when
    z_i < Φ⁻¹(p_i), which keeps every marginal firing probability at exactly p_i.
    """
    k = p.shape[0]
    if cfg.correlation == 0:
        active = torch.rand(n, k, generator=generator) < p  # (n, n_features)
    else:
        rho = cfg.correlation
        shared = torch.randn(n, int(groups.max()) + 1, generator=generator)[:, groups]  # (n, n_features)
        z = rho**0.5 * shared + (1 - rho) ** 0.5 * torch.randn(n, k, generator=generator)  # (n, n_features)
        active = z < torch.special.ndtri(p.double()).float()  # (n, n_features)
    if cfg.magnitude == "uniform":
        mag = 0.5 + torch.rand(n, k, generator=generator)  # (n, n_features)
    elif cfg.magnitude == "lognormal":
        s = cfg.lognormal_sigma
        mag = torch.exp(s * torch.randn(n, k, generator=generator) - s * s / 2)  # (n, n_features)
    else:
        mag = torch.ones(n, k)
    return active * mag  # (n, n_features)


def sample_activations(subject: Subject, n: int, generator: torch.Generator | None = None) -> SyntheticBatch:
    """Activations (n, d) and the true codes (n, n_features) of a `synthetic` subject."""
    x = subject.sample(n, generator)
    k = subject.ground_truth["features"].shape[0]
    with torch.no_grad():
        return SyntheticBatch(subject.model.acts(x), x[:, :k])


def planted_moments(cfg: SyntheticConfig, features: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and covariance (d, d) of the planted activations, float64, in closed form for
    independent firing: code_i = active_i * magnitude_i has mean p_i E[m], variance p_i E[m^2] - (p_i E[m])^2."""
    m1, m2 = 1.0, {"uniform": 1.0 + 1.0 / 12.0, "lognormal": math.exp(cfg.lognormal_sigma**2), "constant": 1.0}[cfg.magnitude]
    p, F = p.double(), features.double()  # (n_features,), (n_features, d)
    var = p * m2 - (p * m1) ** 2  # (n_features,)
    cov = F.T @ (var[:, None] * F) + cfg.noise**2 * torch.eye(cfg.d, dtype=torch.float64)  # (d, d)
    return (p * m1) @ F, cov


def _square_root(cov: torch.Tensor) -> torch.Tensor:
    """A (d, d) with A^T A = cov (symmetric square root; cov may be singular)."""
    vals, vecs = torch.linalg.eigh(cov)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T  # (d, d)


def _rotation(cfg: SyntheticConfig) -> torch.Tensor:
    """A Haar-random rotation (d, d), rows orthonormal, from the dictionary's seed."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + _DICT_SEED_OFFSET + 1)
    q, r = torch.linalg.qr(torch.randn(cfg.d, cfg.d, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).T.float().contiguous()  # (d, d)


@SUBJECTS.register("synthetic", help="activations planted from a known sparse dictionary of unit directions")
class Synthetic:
    """Factory for the `synthetic` subject."""

    Config = SyntheticConfig

    @staticmethod
    def build(cfg: SyntheticConfig) -> Subject:
        features, groups = _dictionary(cfg)
        p = firing_probabilities(cfg)
        readout = features if cfg.readout_threshold is not None else None
        if cfg.kind == "sparse":
            model = SyntheticModel(features, None, readout, cfg.readout_threshold or 0.0)
            truth = {"features": features, "firing_prob": p, "groups": groups}  # groups: correlated-firing group ids
            draw = lambda n, g: _sample_codes(cfg, p, groups, n, g)  # noqa: E731  (n, n_features)
        elif cfg.kind == "gaussian":
            mean, cov = planted_moments(cfg, features, p)
            model = SyntheticModel(_square_root(cov).float(), mean.float(), readout, cfg.readout_threshold or 0.0)
            truth = {}  # no sparse structure: nothing to recover
            draw = lambda n, g: torch.randn(n, cfg.d, generator=g)  # noqa: E731  (n, d)
        else:
            rotation = _rotation(cfg)  # (d, d)
            model = SyntheticModel(rotation, None, readout, cfg.readout_threshold or 0.0)
            truth = {"features": rotation, "firing_prob": torch.ones(cfg.d)}
            draw = lambda n, g: torch.randn(n, cfg.d, generator=g)  # noqa: E731  (n, d) dense codes

        def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
            codes = draw(n, generator)
            # the gaussian kind's noise is inside its covariance already
            if cfg.noise == 0 or cfg.kind == "gaussian":
                return codes
            noise = cfg.noise * torch.randn(n, cfg.d, generator=generator)  # (n, d)
            return torch.cat([codes, noise], dim=1)  # (n, n_codes + d)

        loss = None
        if readout is not None:
            def loss(x: torch.Tensor) -> torch.Tensor:  # squared distortion of the readout, mean over rows
                return (model(x) - model.read(model.acts(x))).pow(2).sum(1).mean()

        return Subject("synthetic", model, sample, loss, cfg.model_dump(), ground_truth=truth)
