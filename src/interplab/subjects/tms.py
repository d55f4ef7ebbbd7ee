"""Toy Models of Superposition (Elhage et al. 2022): many small autoencoders trained at once.

n sparse features are squeezed through m < n hidden dimensions and read back out. Each instance
of the batched model has its own feature density (and optionally importance), so one training
run sweeps a whole phase diagram. The instance dimension is a leading batch dimension of every
parameter; nothing loops over instances in Python.

    model = train_tms(TMS.Config(density=[1.0, 0.1, 0.01]))
    x = sample_tms(1024, model.density, 5, generator)       # (batch, inst, n)
    model(x)                                                 # (batch, inst, n)

Training runs in a private (inst, features, batch) layout: with the batch dimension innermost the
per-instance products are wide matrix multiplies and the density broadcasts are cheap, which is
several times faster on CPU than the (batch, inst, features) layout of the public interface.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from interplab import cache, ui
from interplab.runtime import single_thread
from interplab.config import Config
from interplab.subjects.base import SUBJECTS, Subject
from interplab.subjects.sites import HookPoint

_CACHE_VERSION = 2  # bump when training changes, so old cache entries are not reused
_EVAL_SEED = 982_451_653  # evaluation batches are shared by all training seeds, for fair comparison
_EVAL_SAMPLES = 16_384

Variant = Literal["linear", "relu", "neuron"]


class TMSConfig(Config):
    n_features: int = Field(5, ge=1)
    """Number of sparse input features n."""
    n_hidden: int = Field(2, ge=1)
    """Number of hidden dimensions m (neurons in the 'neuron' variant)."""
    variant: Variant = "relu"
    """linear: x' = WᵀWx + b; relu: x' = ReLU(WᵀWx + b); neuron: h = ReLU(Wx), x' = ReLU(Wᵀh + b)."""
    importance_decay: float = Field(0.9, gt=0)
    """Importance of feature i is decay^i (ignored when `importance` is given)."""
    importance: list[float] | list[list[float]] | None = None
    """Explicit importances: one list of n_features values, or one such list per instance."""
    density: list[float] = [0.1]
    """Probability that a feature is non-zero (1 - S), one entry per instance."""
    steps: int = Field(10_000, ge=0)
    """Optimizer steps; every step draws a fresh batch."""
    batch_size: int = Field(1024, ge=1)
    """Samples per step and instance."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate, constant."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay (PyTorch's default, as in the paper's notebook)."""
    seed: int = 0
    """Seed of the initialisation and of the training batches."""

    @field_validator("density")
    @classmethod
    def _density_in_range(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("density needs at least one entry (one per instance)")
        if any(not 0 < d <= 1 for d in v):
            raise ValueError("every density must lie in (0, 1]")
        return v

    @model_validator(mode="after")
    def _importance_shape(self) -> TMSConfig:
        imp = self.importance
        if imp is None:
            return self
        rows = imp if imp and isinstance(imp[0], list) else [imp]
        if len(rows) not in (1, len(self.density)):
            raise ValueError(f"importance needs 1 row or one per instance ({len(self.density)}), got {len(rows)}")
        if any(len(r) != self.n_features or any(v < 0 for v in r) for r in rows):  # type: ignore[union-attr]
            raise ValueError(f"each importance row needs {self.n_features} non-negative values")
        return self

    def importance_tensor(self) -> torch.Tensor:
        """Importances as (inst, n_features)."""
        inst, n = len(self.density), self.n_features
        if self.importance is None:
            row = self.importance_decay ** torch.arange(n, dtype=torch.float64)  # (n,)
            return row.float().expand(inst, n).clone()
        t = torch.tensor(self.importance, dtype=torch.float32)
        return t.reshape(-1, n).expand(inst, n).clone()  # (inst, n)


class TMSModel(nn.Module):
    """A batch of independent TMS autoencoders; instance i has parameters W[i] (m, n) and b[i] (n,).

    Column W[i, :, j] is feature j's direction in instance i. Sites: `hidden` (batch, inst, m) and
    `out` (batch, inst, n).
    """

    def __init__(
        self, n_features: int, n_hidden: int, variant: Variant, density: torch.Tensor, importance: torch.Tensor
    ):
        super().__init__()
        inst = density.shape[0]
        self.variant = variant
        self.n_features, self.n_hidden = n_features, n_hidden
        self.W = nn.Parameter(torch.zeros(inst, n_hidden, n_features))  # (inst, m, n)
        self.b = nn.Parameter(torch.zeros(inst, n_features))  # (inst, n)
        self.register_buffer("density", density.float().clone())  # (inst,)
        self.register_buffer("importance", importance.float().clone())  # (inst, n)
        self.register_buffer("final_loss", torch.full((inst,), float("nan")))  # (inst,) after training
        self.hidden = HookPoint()
        self.out = HookPoint()

    @property
    def n_instances(self) -> int:
        return self.W.shape[0]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-normal W per instance (fan_in n, fan_out m) and zero b.

        `nn.init.xavier_normal_` on the 3-d tensor would count the instance dimension in the fans,
        making an instance's initial scale depend on how many instances train beside it.
        """
        std = math.sqrt(2.0 / (self.n_features + self.n_hidden))
        with torch.no_grad():
            self.W.copy_(torch.randn(self.W.shape, generator=generator) * std)
            self.b.zero_()

    def _forward_t(self, xt: torch.Tensor) -> torch.Tensor:
        """The model on (inst, n, batch) inputs; hooks still see the public (batch, inst, ·) layout."""
        h = self.W @ xt  # (inst, m, batch)
        if self.variant == "neuron":
            h = F.relu(h)
        h = self.hidden(h.permute(2, 0, 1)).permute(1, 2, 0)  # (inst, m, batch)
        out = torch.baddbmm(self.b.unsqueeze(-1), self.W.transpose(1, 2), h)  # (inst, n, batch)
        if self.variant != "linear":
            out = F.relu(out)
        return self.out(out.permute(2, 0, 1)).permute(1, 2, 0)  # (inst, n, batch)

    def _loss_t(self, xt: torch.Tensor) -> torch.Tensor:
        """Per-instance loss on (inst, n, batch) inputs: mean over batch of Σ_i I_i (x_i - x'_i)²."""
        err = (self._forward_t(xt) - xt).square()  # (inst, n, batch)
        return (self.importance.unsqueeze(-1) * err).sum(1).mean(-1)  # (inst,)

    @torch.no_grad()
    def _backward_t(self, xt: torch.Tensor) -> None:
        """Put the gradient of Σ_instances loss on (inst, n, batch) inputs in W.grad and b.grad by hand.

        A training step is a dozen small ops and autograd's bookkeeping was a third of its cost;
        the backward pass written out is short. ReLU gradients use `threshold_backward` (ReLU's own
        backward kernel), several times faster here than multiplying by a boolean mask. Hooks are not
        run. `_loss_t` with autograd is the reference this must agree with (tested).
        """
        W, batch = self.W, xt.shape[-1]
        a = W @ xt  # (inst, m, batch)
        h = F.relu(a) if self.variant == "neuron" else a  # (inst, m, batch)
        z = torch.baddbmm(self.b.unsqueeze(-1), W.transpose(1, 2), h)  # (inst, n, batch)
        out = z if self.variant == "linear" else F.relu(z)  # (inst, n, batch)
        g = (out - xt).mul_(self.importance.unsqueeze(-1) * (2.0 / batch))  # (inst, n, batch) dL/dout
        if self.variant != "linear":
            g = torch.ops.aten.threshold_backward(g, z, 0.0)  # (inst, n, batch) dL/dz
        gh = W @ g  # (inst, m, batch) dL/dh
        if self.variant == "neuron":
            gh = torch.ops.aten.threshold_backward(gh, a, 0.0)  # (inst, m, batch) dL/da
        self.b.grad = g.sum(-1)  # (inst, n)
        self.W.grad = torch.baddbmm(h @ g.transpose(1, 2), gh, xt.transpose(1, 2))  # (inst, m, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction x' (batch, inst, n) of inputs x (batch, inst, n)."""
        return self._forward_t(x.permute(1, 2, 0)).permute(2, 0, 1)  # (batch, inst, n)

    def loss_per_instance(self, x: torch.Tensor) -> torch.Tensor:
        """Importance-weighted squared error of each instance, averaged over the batch: (inst,)."""
        return self._loss_t(x.permute(1, 2, 0))


def _sparsify(u: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """Sparse features from uniforms u (inst, n_features, n).

    One uniform draw per entry does both jobs: with p the density, ReLU(u/p - (1-p)/p) is zero
    with probability 1 - p and otherwise uniform on [0, 1] — half the random numbers and none of
    the boolean masks of drawing 'active' and 'value' separately.
    """
    inv = (1.0 / density.float()).view(-1, 1, 1)  # (inst, 1, 1)
    return torch.addcmul(1.0 - inv, u, inv).relu_()  # (inst, n_features, n)


def _sample_t(n: int, density: torch.Tensor, n_features: int, generator: torch.Generator | None) -> torch.Tensor:
    """Sparse features in the training layout (inst, n_features, n)."""
    return _sparsify(torch.rand(density.shape[0], n_features, n, generator=generator), density)


def sample_tms(
    n: int, density: torch.Tensor, n_features: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`n` samples for every instance: (n, inst, n_features); feature j of instance i is non-zero
    with probability density[i] and then uniform on [0, 1]."""
    return _sample_t(n, density, n_features, generator).permute(2, 0, 1).contiguous()  # (n, inst, n_features)


def _model_for(cfg: TMSConfig) -> TMSModel:
    density = torch.tensor(cfg.density, dtype=torch.float32)  # (inst,)
    return TMSModel(cfg.n_features, cfg.n_hidden, cfg.variant, density, cfg.importance_tensor())


def _cache_key(cfg: TMSConfig) -> dict:
    return {**cfg.model_dump(mode="json"), "cache_version": _CACHE_VERSION}


@single_thread()
def _fit(cfg: TMSConfig) -> TMSModel:
    """Train from scratch; every instance's loss is summed so each gets its own gradient."""
    model = _model_for(cfg)
    model.reset_parameters(torch.Generator().manual_seed(cfg.seed))
    # Training batches come from numpy's PCG64: uniform draws are the largest cost of a step, and
    # PCG64 makes them about 1.5x faster than torch's CPU generator (Mersenne Twister).
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    u = np.empty((model.n_instances, cfg.n_features, cfg.batch_size), dtype=np.float32)
    opt = torch.optim.AdamW([model.W, model.b], lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    report_every, done = max(1, min(500, cfg.steps // 20)), 0
    with ui.progress(f"training tms ({model.n_instances} instances)", cfg.steps) as advance:
        for step in range(cfg.steps):
            rng.random(out=u, dtype=np.float32)
            xt = _sparsify(torch.from_numpy(u), model.density)  # (inst, n, batch)
            model._backward_t(xt)
            opt.step()
            if (step + 1) % report_every == 0 or step + 1 == cfg.steps:
                with torch.no_grad():
                    advance(step + 1 - done, loss=model._loss_t(xt).mean().item())
                done = step + 1
    model.final_loss.copy_(evaluation_loss(model))
    return model


@torch.no_grad()
def evaluation_loss(model: TMSModel, n: int = _EVAL_SAMPLES, chunk: int = 2048) -> torch.Tensor:
    """Per-instance loss (inst,) on a fixed batch that is the same for every training seed.

    Common evaluation data makes the comparison of seeds (keep the lowest loss) less noisy.
    """
    eval_gen = torch.Generator().manual_seed(_EVAL_SEED)
    total = torch.zeros(model.n_instances)
    for start in range(0, n, chunk):
        xt = _sample_t(min(chunk, n - start), model.density, model.n_features, eval_gen)  # (inst, n, chunk)
        total += model._loss_t(xt) * xt.shape[-1]
    return total / n


def train_tms(cfg: TMSConfig) -> TMSModel:
    """The trained model for `cfg`, from the cache when it is there (deterministic from the seed).

    `model.final_loss` (inst,) is each instance's loss on a fixed evaluation batch shared by all
    seeds, so experiments can keep the best of several seeds.
    """
    folder = cache.entry("tms", _cache_key(cfg))
    model = _model_for(cfg)
    tensors = cache.load_tensors(folder)
    if tensors is not None and set(tensors) == set(model.state_dict()):
        model.load_state_dict(tensors)
        return model
    start = time.perf_counter()
    model = _fit(cfg)
    meta = {**_cache_key(cfg), "seconds": time.perf_counter() - start, "final_loss": model.final_loss.tolist()}
    cache.save_tensors(folder, model.state_dict(), meta)
    return model


@SUBJECTS.register("tms", help="Toy Models of Superposition: sparse features through a small bottleneck")
class TMS:
    """Factory for the `tms` subject."""

    Config = TMSConfig

    @staticmethod
    def build(cfg: TMSConfig) -> Subject:
        model = train_tms(cfg)

        def sample(n: int, generator: torch.Generator | None = None, split: str = "train") -> torch.Tensor:
            return sample_tms(n, model.density, cfg.n_features, generator)  # (n, inst, n_features)

        def loss(x: torch.Tensor) -> torch.Tensor:
            return model.loss_per_instance(x).mean()

        truth = {"W": model.W.detach(), "importance": model.importance, "density": model.density}
        return Subject("tms", model, sample, loss, cfg.model_dump(), ground_truth=truth)
