"""Sparse autoencoders: ReLU + L1, TopK (+AuxK), BatchTopK and JumpReLU.

Each architecture is a `Codec` (SAELens's tensors W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in),
b_dec, and `threshold` for JumpReLU) whose `forward(x, dead)` returns a `ForwardOutput`:
reconstruction, codes, pre-activations, batch FVU, the unweighted sparsity penalty and the
unweighted auxiliary loss. In training mode the training nonlinearity and losses are used; in eval
mode exactly what is saved and what SAELens would compute. Any loop can drive these modules:
loss = fvu + coefficient · sparsity + aux_coefficient · aux_loss, then `remove_parallel_grads_()`
before the optimizer step and `normalize_decoder_()` after it.

Penalties are divided by d_in, so coefficients are in the units of SAELens's summed squared error
on inputs normalised to E||x||^2 = d_in (fit trains on such inputs and folds the scale back).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from interplab.decompose.base import Data, Decomposer, Settings, register
from interplab.decompose.saelens import Codec, ForwardOutput, batch_fvu
from interplab.decompose.topk import shared_cut
from interplab.parallel import World


class SAE(Codec):
    """A trainable Codec. Subclasses set the training nonlinearity and the loss terms."""

    unit_decoder: ClassVar[bool] = True  # decoder rows held at unit norm during training
    init_decoder_norm: ClassVar[float] = 1.0
    # TrainConfig.decoder_norm when it is None. Unit for TopK and BatchTopK: SAELens's free norm is
    # an option, not the default, since its gain on the bench's validation split was small (TopK
    # 0.0914 against 0.0940 at lr 4e-4, 0.0768 against 0.0777 at 8e-4, one seed) and FVU parity
    # with it was not measured at both learning rates (bench/RESULTS.md, "SAE training at scale")
    default_decoder_norm: ClassVar[str] = "unit"

    @torch.no_grad()
    def init_(self, mean: torch.Tensor, generator: torch.Generator) -> None:
        """Random decoder rows at `init_decoder_norm`, encoder = decoder^T, b_dec = data mean."""
        W = torch.randn(self.d_sae, self.d_in, generator=generator)  # (d_sae, d_in)
        W = W / W.norm(dim=1, keepdim=True) * self.init_decoder_norm
        self.W_dec.copy_(W)
        self.W_enc.copy_(W.T)
        self.b_enc.zero_()
        self.b_dec.copy_(mean)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam parameter groups; JumpReLU gives its thresholds their own learning rate."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def train_activate(self, pre: torch.Tensor, world: World) -> torch.Tensor:
        """The training nonlinearity; `world`: the ranks whose rows make up the batch with these."""
        return self.activate(pre)

    def sparsity_loss(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return pre.new_zeros(())

    def aux_loss(self, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())

    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None, world: World | None = None) -> ForwardOutput:
        """x (n, d_in); `dead` (d_sae,) bool marks latents the auxiliary loss should revive; `world`:
        the data-parallel ranks whose rows make up the training batch with x (BatchTopK cuts it whole)."""
        pre = self.pre_acts(x)  # (n, d_sae)
        codes = self.train_activate(pre, world or World()) if self.training else self.activate(pre)  # (n, d_sae)
        recon = self.decode(codes)  # (n, d_in)
        zero = x.new_zeros(())
        if not self.training:
            return ForwardOutput(recon, codes, pre, batch_fvu(x, recon), zero, zero)
        aux = self.aux_loss(x, recon, pre, dead) if dead is not None and bool(dead.any()) else zero
        return ForwardOutput(recon, codes, pre, batch_fvu(x, recon), self.sparsity_loss(pre, codes), aux)

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Drop the gradient component along each (unit) decoder row: the step then moves rows
        along the sphere instead of fighting the renormalisation (Gao et al. 2024)."""
        g = self.W_dec.grad
        if self.unit_decoder and g is not None:
            g -= (g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec  # (d_sae, d_in)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """The decoder-norm constraint: rows back to unit norm (no-op for the ReLU/L1 SAE, whose
        penalty is weighted by the row norms instead)."""
        if self.unit_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def fold_scale_(self, s: float) -> None:
        """Trained on x·s, act on x: ReLU, TopK and JumpReLU are positively homogeneous, so
        dividing the biases (and thresholds) by s gives codes in the units of x and keeps W_dec."""
        self.b_enc /= s
        self.b_dec /= s

    @torch.no_grad()
    def fold_decoder_norm_(self) -> None:
        """Decoder rows to unit norm, each latent's norm moved into its encoder column, bias (and
        threshold): the same outputs, with `rescale_acts_by_decoder_norm` off afterwards. Exact for
        ReLU and JumpReLU (positively homogeneous) and for TopK and BatchTopK that rank
        pre·||W_dec,i|| (the rescaling on), which is what the folded encoder computes; a TopK that
        ranks pre alone would rank differently after the fold."""
        norms = self.W_dec.norm(dim=1).clamp_min(1e-30)  # (d_sae,)
        self.W_enc *= norms
        self.b_enc *= norms
        self.W_dec /= norms.unsqueeze(1)
        self._fold_threshold(norms, rescaled=self.rescale_acts_by_decoder_norm)
        self.rescale_acts_by_decoder_norm = False

    def _fold_threshold(self, norms: torch.Tensor, rescaled: bool) -> None:
        """Thresholds in units of the pre-activations: unchanged where those were already rescaled."""


class ReLUSAE(SAE):
    """f = ReLU((x - b_dec) W_enc + b_enc); penalty sum_i f_i ||W_dec,i|| (Anthropic, April 2024)."""

    unit_decoder = False
    init_decoder_norm = 0.1
    default_decoder_norm = "free"  # the L1 penalty weights each code by its row's norm

    def __init__(self, d_in: int, d_sae: int):
        super().__init__(d_in, d_sae, "standard")

    def sparsity_loss(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (codes * self.W_dec.norm(dim=1)).sum(-1).mean() / self.d_in


def auxk_loss(sae: SAE, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """AuxK: the top k_aux dead latents (k_aux = d_in/2) reconstruct the residual e = x - x_hat;
    squared error over the residual's total variance, scaled down when few latents are dead."""
    k_aux = max(1, sae.d_in // 2)
    n_dead = int(dead.sum())
    scale = min(n_dead / k_aux, 1.0)
    e = (x - recon).detach()  # (n, d_in)
    top = pre.masked_fill(~dead, float("-inf")).topk(min(k_aux, n_dead), dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))  # (n, d_sae)
    if sae.rescale_acts_by_decoder_norm:  # ranked by pre·||W_dec,i||, decoded as `decode` does
        acts = acts / sae.W_dec.norm(dim=-1)  # (n, d_sae)
    e_hat = acts @ sae.W_dec  # (n, d_in), no bias: the residual has none
    total = (e - e.mean(0)).pow(2).sum().clamp_min(torch.finfo(e.dtype).tiny)
    return scale * (e_hat - e).pow(2).sum() / total


class TopKSAE(SAE):
    """f = ReLU(TopK_k(pre)) per token (Gao et al. 2024), with AuxK against dead latents."""

    def __init__(self, d_in: int, d_sae: int, k: int, rescale_acts_by_decoder_norm: bool = False):
        super().__init__(d_in, d_sae, "topk", k=k, rescale_acts_by_decoder_norm=rescale_acts_by_decoder_norm)

    def aux_loss(self, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        return auxk_loss(self, x, recon, pre, dead)


class BatchTopKSAE(SAE):
    """Training keeps the k·n largest activations of the whole batch of n tokens; a threshold
    tracks, by an EMA, the smallest activation kept; inference is JumpReLU with that threshold for
    every latent, which is also how SAELens saves BatchTopK (architecture `jumprelu`)."""

    def __init__(self, d_in: int, d_sae: int, k: int, threshold_lr: float = 0.01):
        super().__init__(d_in, d_sae, "jumprelu", k=k)
        self.threshold_lr = threshold_lr

    def _fold_threshold(self, norms: torch.Tensor, rescaled: bool) -> None:
        if not rescaled:
            self.threshold *= norms

    def train_activate(self, pre: torch.Tensor, world: World) -> torch.Tensor:
        acts = torch.relu(pre)  # (n, d_sae)
        if world.size > 1:  # the rows of the batch are spread over the ranks: cut the whole batch
            n_all = torch.tensor([acts.shape[0]], device=acts.device)
            world.sum_(n_all)
            cut = shared_cut(acts.detach(), self.k * int(n_all), world)
            self.update_threshold(cut.low)
            return acts * cut.keep
        top = acts.flatten().topk(min(self.k * acts.shape[0], acts.numel()))
        codes = torch.zeros_like(acts).flatten().scatter_(0, top.indices, top.values).view_as(acts)
        self.update_threshold(top.values[top.values > 0])
        return codes

    @torch.no_grad()
    def update_threshold(self, kept: torch.Tensor) -> None:
        """One step of the threshold's EMA towards the smallest value the batch kept (`kept`: those
        values, or their minimum; +inf or empty when it kept none, and then the EMA stays)."""
        low = kept.min() if kept.numel() else None
        if low is not None and bool(torch.isfinite(low)):
            self.threshold.lerp_(low.expand_as(self.threshold), self.threshold_lr)

    def aux_loss(self, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        return auxk_loss(self, x, recon, pre, dead)

    @torch.no_grad()
    def fold_scale_(self, s: float) -> None:
        super().fold_scale_(s)
        self.threshold /= s


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    """pre · H(pre - θ); gradient to pre through the gate, to θ by the rectangle-kernel estimate
    of -θ δ(pre - θ) (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        h = ctx.bandwidth
        d_theta = -(theta / h) * _rectangle((pre - theta) / h) * g  # (n, d_sae)
        return g * (pre > theta).to(g.dtype), d_theta.sum(0), None


class _StepFn(torch.autograd.Function):
    """H(pre - θ) for the L0 penalty: no gradient to pre, -δ(pre - θ) estimated for θ."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        h = ctx.bandwidth
        return None, (-(1.0 / h) * _rectangle((pre - theta) / h) * g).sum(0), None


class JumpReLUSAE(SAE):
    """f_i = z_i · H(z_i - θ_i), θ = exp(log_threshold) trained through straight-through
    estimators; penalty L0 (step) or sum_i tanh(c · f_i ||W_dec,i||).

    log_threshold is float64 so that the float32 `threshold` SAELens stores round-trips exactly
    through log and exp: a saved and reloaded SAE encodes bit-identically."""

    def __init__(self, d_in: int, d_sae: int, bandwidth: float = 0.05, init_threshold: float = 0.01,
                 sparsity: Literal["l0", "tanh"] = "l0", tanh_scale: float = 4.0, threshold_lr_scale: float = 1.0):
        super().__init__(d_in, d_sae, "jumprelu")
        self.bandwidth, self.sparsity, self.tanh_scale = bandwidth, sparsity, tanh_scale
        self.threshold_lr_scale = threshold_lr_scale
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(init_threshold), dtype=torch.float64))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        rest = [p for n, p in self.named_parameters() if n != "log_threshold"]
        return [{"params": rest, "lr": lr}, {"params": [self.log_threshold], "lr": lr * self.threshold_lr_scale}]

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp().to(torch.float32)  # (d_sae,)

    def train_activate(self, pre: torch.Tensor, world: World) -> torch.Tensor:
        return _JumpReLUFn.apply(pre, self.threshold, self.bandwidth)

    def sparsity_loss(self, pre: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self.sparsity == "tanh":
            per_latent = torch.tanh(self.tanh_scale * codes * self.W_dec.norm(dim=1))  # (n, d_sae)
        else:
            per_latent = _StepFn.apply(pre, self.threshold, self.bandwidth)  # (n, d_sae)
        return per_latent.sum(-1).mean() / self.d_in

    def _fold_threshold(self, norms: torch.Tensor, rescaled: bool) -> None:
        if not rescaled:
            self.log_threshold += norms.to(torch.float64).log()

    def _set_tensor(self, name: str, value: torch.Tensor) -> None:
        if name == "threshold":  # SAELens treats θ <= 0 as 0 (ReLU first), so clamping keeps outputs
            self.log_threshold.copy_(value.to(torch.float64).clamp_min(0).log())
        else:
            super()._set_tensor(name, value)

    @torch.no_grad()
    def fold_scale_(self, s: float) -> None:
        super().fold_scale_(s)
        self.log_threshold -= math.log(s)


# --- decomposers --------------------------------------------------------------------------------
class SAESettings(Settings):
    width: int | None = Field(default=None, ge=1)
    """Number of latents, SAELens's d_sae (None: 8 x d_in)."""
    lr: float | None = Field(default=None, gt=0)
    """Adam learning rate (None: 2e-4 / sqrt(width / 2^14), Gao et al.'s fitted rule, at most 1e-2)."""
    batch_size: int = Field(default=4096, ge=1)
    """Tokens per step when fitting on a tensor (an iterable's batches are used as they come)."""
    steps: int | None = Field(default=None, ge=1)
    """Optimizer steps (None: `epochs` passes over a tensor, or one pass over an iterable)."""
    epochs: float = Field(default=10.0, gt=0)
    """Passes over a tensor when `steps` is None."""
    dead_tokens: int | None = Field(default=None, ge=1)
    """A latent is dead after this many tokens without firing (None: a tenth of the run, at least
    10 batches, at most 10M tokens)."""
    device: str = "cpu"
    """Where fit trains ("cpu", "cuda", ...); the fitted SAE lives on the CPU."""


class SparsitySettings(SAESettings):
    sparsity_coefficient: float = Field(default=5.0, ge=0)
    """Weight of the sparsity penalty, in SSE units (see the module docstring). When k is set it
    is only the starting value: fit adapts it until the mean L0 reaches k."""
    sparsity_warmup: float = Field(default=0.05, ge=0, le=1)
    """Fraction of the steps over which the coefficient ramps up linearly from 0."""


class JumpReLUSettings(SparsitySettings):
    sparsity_coefficient: float = Field(default=1.0, ge=0)
    """Weight of the L0 (or tanh) penalty, in SSE units; adapted towards mean L0 = k when k is set."""
    bandwidth: float = Field(default=0.05, gt=0)
    """Width of the rectangle kernel of the straight-through estimators."""
    init_threshold: float = Field(default=0.01, gt=0)
    """Initial threshold, in units of inputs normalised to E||x||^2 = d_in."""
    sparsity_loss: Literal["l0", "tanh"] = "l0"
    """'l0': the step function; 'tanh': sum_i tanh(c f_i ||W_dec,i||) (Anthropic, 2025)."""
    tanh_scale: float = Field(default=4.0, gt=0)
    """c in the tanh penalty."""
    threshold_lr_scale: float = Field(default=10.0, gt=0)
    """Learning rate of log(threshold) relative to `lr`. Adam moves log θ by about lr per step, so
    at lr ~1e-3 a threshold needs thousands of steps to grow tenfold; short runs need more."""


class TopKSettings(SAESettings):
    k: int = Field(default=32, ge=1)
    """Active latents per token (BatchTopK: per token on average over each batch)."""
    aux_coefficient: float = Field(default=1 / 32, ge=0)
    """Weight of the AuxK loss that revives dead latents."""


class SAEDecomposer(Decomposer):
    """Shared fit for every SAE: `interplab.decompose.train.train_sae` does the work."""

    Settings = SAESettings
    adapts_coefficient: ClassVar[bool] = False

    def _module(self, d_in: int, d_sae: int) -> SAE:
        raise NotImplementedError

    def _new_codec(self, cfg: dict[str, Any]) -> Codec:
        module = self._module(cfg["d_in"], cfg["d_sae"])
        module.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
        module.rescale_acts_by_decoder_norm = bool(cfg.get("rescale_acts_by_decoder_norm", False))
        return module

    @classmethod
    def settings_from_saelens(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"width": cfg["d_sae"]}
        if cfg.get("k") is not None:
            out["k"] = cfg["k"]
        return out

    def fit(self, X: Data, checkpoint_dir: str | Path | None = None) -> SAEDecomposer:
        """Train with `interplab.decompose.train` (normalise, initialise, Adam, fold the scale
        back); with `checkpoint_dir`, a killed fit resumes where it stopped."""
        from interplab.decompose.train import train_sae  # train.py builds on this module

        train_sae(self, X, None, checkpoint_dir)
        return self


@register("sae-relu", help="SAE with ReLU and a decoder-norm-weighted L1 penalty")
class ReLUDecomposer(SAEDecomposer):
    Settings = SparsitySettings
    hard_k = False
    adapts_coefficient = True

    def _module(self, d_in: int, d_sae: int) -> SAE:
        return ReLUSAE(d_in, d_sae)


@register("sae-topk", help="SAE keeping the k largest latents per token, with AuxK")
class TopKDecomposer(SAEDecomposer):
    Settings = TopKSettings

    def _module(self, d_in: int, d_sae: int) -> SAE:
        return TopKSAE(d_in, d_sae, self.settings.k)


@register("sae-batchtopk", help="SAE keeping the k*n largest latents per batch of n tokens")
class BatchTopKDecomposer(SAEDecomposer):
    Settings = TopKSettings
    hard_k = False

    def _module(self, d_in: int, d_sae: int) -> SAE:
        return BatchTopKSAE(d_in, d_sae, self.settings.k)


@register("sae-jumprelu", help="SAE with JumpReLU thresholds trained through an L0 penalty")
class JumpReLUDecomposer(SAEDecomposer):
    Settings = JumpReLUSettings
    hard_k = False
    adapts_coefficient = True

    def _module(self, d_in: int, d_sae: int) -> SAE:
        s = self.settings
        return JumpReLUSAE(d_in, d_sae, s.bandwidth, s.init_threshold, s.sparsity_loss, s.tanh_scale,
                           s.threshold_lr_scale)
