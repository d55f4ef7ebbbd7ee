"""Planted features read out by a small trained layer: toys whose loss depends on known features.

Subject `readout`. Inputs are codes z (n, m): sparse non-negative ones drawn exactly as the
`synthetic` subject draws them, or dense Gaussian ones with standard deviations decay^i. The
site `hidden` is z D (n, d), D (m, d) the planted directions (the synthetic dictionary's unit rows,
or orthonormal rows for Gaussian codes, m <= d). A trained linear readout y = hidden R + b (n, K)
predicts the first K features ("important") plus Gaussian noise of standard deviation `noise`
(the loss's irreducible part, K noise^2), and the loss is the mean over samples of
sum_k (y_k - z_k - noise_k)^2; the noise rides in K extra input columns, so the model stays a pure
function of its input. Only R and b train (AdamW on fresh batches, from zero), so which features
the loss depends on is known by construction: a few sparse ones (few important of many), many
sparse ones (every feature important), or a dense Gaussian subspace. The readout is linear on
purpose: a ReLU readout trained from random weights leaves some features unread (dead units),
which would make "the features the loss depends on" a matter of luck.

The training compute of a readout is 6 N D FLOPs, N = d K + K parameters and D = steps x batch
samples; `readout_ladder(cfg, steps)` gives the same toy trained for each number of steps (the
rungs of a compute ladder whose top rung is the subject), so the compute-equivalent pipeline runs
on a planted family too.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field, model_validator
from torch import nn

from interplab import cache, ui
from interplab.config import Config
from interplab.runtime import single_thread
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.sites import HookPoint

_CACHE_VERSION = 2


class ReadoutConfig(Config):
    """The planted features, which of them the loss reads, and how the readout trains."""

    codes: Literal["sparse", "gaussian"] = "sparse"
    """Sparse non-negative codes (the `synthetic` subject's) or dense Gaussian ones."""
    n_features: int = Field(64, ge=1)
    """Planted features m (for Gaussian codes at most d)."""
    d: int = Field(32, ge=1)
    """Dimension of the site `hidden`."""
    important: int | None = Field(None, ge=1)
    """K: the loss depends on the first K features (None: all of them)."""
    mean_active: float = Field(3.0, gt=0)
    """Sparse codes: expected active features per sample."""
    firing: Literal["geometric", "zipf", "uniform"] = "uniform"
    """Sparse codes: shape of the firing probabilities across features."""
    noise: float = Field(0.0, ge=0)
    """Standard deviation of the noise on the targets (irreducible loss: K noise^2)."""
    decay: float = Field(0.9, gt=0, le=1)
    """Geometric firing: p_i proportional to decay^i; Gaussian codes: standard deviation decay^i."""
    steps: int = Field(1000, ge=0)
    """AdamW steps of the readout."""
    batch_size: int = Field(256, ge=1)
    """Samples per step."""
    lr: float = Field(1e-2, gt=0)
    """AdamW learning rate (constant)."""
    seed: int = 0
    """Seed of the dictionary and of the readout's training batches."""

    @model_validator(mode="after")
    def _shapes(self) -> ReadoutConfig:
        if self.codes == "gaussian" and self.n_features > self.d:
            raise ValueError(f"Gaussian codes need n_features <= d ({self.n_features} > {self.d})")
        if self.important is not None and self.important > self.n_features:
            raise ValueError(f"important ({self.important}) cannot exceed n_features ({self.n_features})")
        if self.codes == "sparse" and self.mean_active > self.n_features:
            raise ValueError(f"mean_active ({self.mean_active}) cannot exceed n_features ({self.n_features})")
        return self

    @property
    def n_out(self) -> int:
        return self.important or self.n_features


class ReadoutModel(nn.Module):
    """codes (n, m) -> hidden = codes D (site `hidden`) -> hidden R + b (n, K)."""

    def __init__(self, features: torch.Tensor, n_out: int):
        super().__init__()
        self.register_buffer("features", features)  # (m, d)
        self.hidden = HookPoint()
        self.readout = nn.Linear(features.shape[1], n_out)
        with torch.no_grad():
            self.readout.weight.zero_()
            self.readout.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = self.features.shape[0]
        return self.readout(self.hidden(z[:, :m] @ self.features))  # (n, K)

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """Mean over samples of the squared error on the K targets (plus their noise columns)."""
        m, k = self.features.shape[0], self.readout.out_features
        target = z[:, :k] + (z[:, m : m + k] if z.shape[1] > m else 0.0)  # (n, K)
        return (self(z) - target).pow(2).sum(1).mean()


class Sampler(NamedTuple):
    features: torch.Tensor  # (m, d)
    sample: Any  # (n, generator) -> inputs (n, m [+ K]): codes [and target noise]


def _sampler(cfg: ReadoutConfig) -> Sampler:
    s = _codes(cfg)
    if cfg.noise == 0:
        return s

    def sample(n: int, g: torch.Generator | None) -> torch.Tensor:
        z = s.sample(n, g)  # (n, m)
        return torch.cat([z, cfg.noise * torch.randn(n, cfg.n_out, generator=g)], 1)  # (n, m + K)

    return Sampler(s.features, sample)


def _codes(cfg: ReadoutConfig) -> Sampler:
    if cfg.codes == "sparse":
        from interplab.subjects.base import load_subject

        syn = load_subject("synthetic", n_features=cfg.n_features, d=cfg.d, mean_active=cfg.mean_active,
                           firing=cfg.firing, decay=cfg.decay, magnitude="uniform", seed=cfg.seed)
        return Sampler(syn.ground_truth["features"], lambda n, g: syn.sample(n, g))
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 4_241)
    q, _ = torch.linalg.qr(torch.randn(cfg.d, cfg.n_features, generator=gen, dtype=torch.float64))  # (d, m)
    scale = cfg.decay ** torch.arange(cfg.n_features, dtype=torch.float32)  # (m,)
    return Sampler(q.T.float().contiguous(), lambda n, g: torch.randn(n, cfg.n_features, generator=g) * scale)


@single_thread()
def _fit(cfg: ReadoutConfig, s: Sampler) -> ReadoutModel:
    model = ReadoutModel(s.features, cfg.n_out)
    opt = torch.optim.AdamW(model.readout.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in range(cfg.steps):
        loss = model.loss(s.sample(cfg.batch_size, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def train_readout(cfg: ReadoutConfig) -> ReadoutModel:
    """The trained toy for `cfg`, from the cache when it is there (deterministic from the seed)."""
    s = _sampler(cfg)
    key = {**cfg.model_dump(mode="json"), "cache_version": _CACHE_VERSION}
    folder = cache.entry("readout", key)
    model = ReadoutModel(s.features, cfg.n_out)
    tensors = cache.load_tensors(folder)
    if tensors is not None and set(tensors) == set(model.state_dict()):
        model.load_state_dict(tensors)
        return model.eval()
    ui.info(f"readout: training a {cfg.codes} toy ({cfg.n_features} features in {cfg.d} dims, {cfg.steps} steps)")
    model = _fit(cfg, s)
    cache.save_tensors(folder, model.state_dict(), key)
    return model


def readout_flops(cfg: ReadoutConfig) -> tuple[int, int, float]:
    """(N, D, 6 N D) of a readout's training."""
    n = cfg.d * cfg.n_out + cfg.n_out
    d = cfg.steps * cfg.batch_size
    return n, d, 6.0 * n * d


def readout_ladder(cfg: ReadoutConfig, steps: list[int]) -> list[tuple[Subject, float]]:
    """The toy trained for each number of `steps` (ascending), with its training FLOPs."""
    return [(build(cfg.with_overrides({"steps": s})), readout_flops(cfg.with_overrides({"steps": s}))[2])
            for s in sorted(steps)]


def build(cfg: ReadoutConfig) -> Subject:
    s = _sampler(cfg)
    model = train_readout(cfg)

    def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
        return s.sample(n, generator)  # (n, m)

    truth = {"features": s.features, "important": torch.arange(cfg.n_out)}  # codes: inputs[:, :n_features]
    return Subject("readout", model, sample, model.loss, cfg.model_dump(), ground_truth=truth)


@SUBJECTS.register("readout", help="planted features read out by a trained layer (the loss's features are known)")
class Readout:
    """Factory for the `readout` subject."""

    Config = ReadoutConfig

    @staticmethod
    def build(cfg: ReadoutConfig) -> Subject:
        return build(cfg)
