"""Description length in bits per token: one scale for methods of different width and sparsity.

A token is described by which latents are active, the value of each active one, and the residual
x - x_hat, all at one quantisation step delta. The choices, fixed here so every method is coded the
same way (the reference leaves them open):

- delta = `precision` x sigma_x, where sigma_x^2 is the per-dimension variance of x averaged over
  dimensions (total variance / d) on the evaluation set: the precision is relative to the data's
  scale, so a subject's units do not matter. Default precision 0.01 (1% of a typical std).
- Index bits = sum_j H_b(p_j), the entropy of the firing pattern under independent Bernoulli
  firing with each latent's frequency p_j on the evaluation set (about log2 C(m, L0) when all
  latents fire equally often; 0 for a latent that always or never fires, so a dense code pays
  nothing for its pattern).
- Value bits = sum_j p_j b(sigma_j^2): each active value is coded under a Gaussian fitted to
  that latent's active values, at step delta: b(s^2) = max(0, 1/2 log2(2 pi e s^2 / delta^2)),
  the entropy of a finely quantised Gaussian. Values are measured in the units of x (code times
  its decoder row's norm), so that delta means the same for SAEs whose rows are not unit norm.
- Residual bits = sum_i b(s_i^2) over dimensions, s_i^2 the residual's variance in dimension i
  (a diagonal Gaussian at step delta). A perfect reconstruction costs 0.
- bits_per_token = index + value + residual. Means, variances and frequencies of the codes are
  treated as known (part of the model, like the dictionary); the error that quantising the codes
  would add to the reconstruction is ignored (it is delta^2/12 per value: small at 1%).
- The dictionary is reported apart: its distinct directions (a row and its negative, as in
  sign-split PCA, count once) x d parameters, each coded at the same relative precision,
  b = 1/2 log2(2 pi e / precision^2) bits (8.7 at 1%), amortised over `amortize_tokens` (by
  default the evaluation tokens).
- bits_raw: x coded directly, dimension by dimension, at the same delta: the no-decomposition
  reference (the identity basis without a budget lands there).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interplab.metrics.bootstrap import BatchStats, Estimate, Stats, safe_div

DEFAULT_PRECISION = 0.01
_TWO_PI_E = 2 * math.pi * math.e


def gaussian_bits(var: np.ndarray, delta2: np.ndarray | float) -> np.ndarray:
    """Entropy in bits of a Gaussian of variance `var` quantised at step sqrt(delta2), floored at 0."""
    ratio = safe_div(np.asarray(var, dtype=np.float64) * _TWO_PI_E, delta2, fill=0.0)
    out = np.zeros_like(ratio)
    np.log2(ratio, out=out, where=ratio > 1)
    return 0.5 * out


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H_b(p) in bits, 0 at p = 0 and p = 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    inside = (p > 0) & (p < 1)
    q = np.where(inside, p, 0.5)
    return np.where(inside, -(q * np.log2(q) + (1 - q) * np.log2(1 - q)), 0.0)


def bits_per_parameter(precision: float = DEFAULT_PRECISION) -> float:
    """Bits of one dictionary entry coded at step `precision` x the entries' own std."""
    return max(0.0, 0.5 * math.log2(_TWO_PI_E / precision**2))


def distinct_directions(components: torch.Tensor, decimals: int = 5) -> int:
    """Rows of (m, d) up to sign and scale: sign-split dictionaries [D; -D] count each row once."""
    w = components.double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)  # (m, d)
    first = (w.abs() > 1e-8).double().argmax(1)  # (m,) first clearly non-zero entry of each row
    sign = (w[torch.arange(w.shape[0]), first] >= 0).double() * 2 - 1  # (m,) +-1
    canon = np.round((w * sign[:, None]).numpy(), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return len({row.tobytes() for row in canon})


def dictionary_bits(components: torch.Tensor, precision: float = DEFAULT_PRECISION) -> float:
    """Bits to store the dictionary: distinct directions x d_in entries x bits per entry."""
    return distinct_directions(components) * components.shape[1] * bits_per_parameter(precision)


def _parts(s: Stats, precision: float) -> dict[str, np.ndarray]:
    n = s["n"]
    nd = n[..., None]
    var_x = np.clip(s["x_sq"] / nd - (s["x_sum"] / nd) ** 2, 0, None)  # (..., d)
    delta2 = precision**2 * var_x.mean(-1)  # (...,)
    p = s["fires"] / nd  # (..., m)
    var_v = np.clip(safe_div(s["v_sq"], s["fires"], 0.0) - safe_div(s["v_sum"], s["fires"], 0.0) ** 2, 0, None)
    var_r = np.clip(s["r_sq"] / nd - (s["r_sum"] / nd) ** 2, 0, None)  # (..., d)
    index = binary_entropy(p).sum(-1)
    value = (p * gaussian_bits(var_v, delta2[..., None])).sum(-1)
    residual = gaussian_bits(var_r, delta2[..., None]).sum(-1)
    raw = gaussian_bits(var_x, delta2[..., None]).sum(-1)
    return {"bits_per_token": index + value + residual, "bits_index": index, "bits_values": value,
            "bits_residual": residual, "bits_raw": raw}


class DescriptionLength:
    """Streaming sums for the description length: `update` per evaluation batch, then `result`."""

    def __init__(self, decoder_norms: torch.Tensor, precision: float = DEFAULT_PRECISION):
        if not precision > 0:
            raise ValueError(f"precision must be > 0, got {precision}")
        self.norms = decoder_norms.detach().double()  # (m,)
        self.precision = precision
        self.stats = BatchStats()
        self._shift: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, codes: torch.Tensor, recon: torch.Tensor) -> None:
        """x (n, d), codes (n, m), recon (n, d) of one evaluation batch."""
        x64 = x.detach().double()  # (n, d)
        if self._shift is None:
            self._shift = x64.mean(0)  # (d,) variances are shift-free; shifting avoids cancellation
        xc = x64 - self._shift  # (n, d)
        r = x64 - recon.detach().double()  # (n, d)
        v = codes.detach().double() * self.norms  # (n, m) values in units of x
        self.stats.add(
            n=x.shape[0], x_sum=xc.sum(0).numpy(), x_sq=xc.pow(2).sum(0).numpy(),
            r_sum=r.sum(0).numpy(), r_sq=r.pow(2).sum(0).numpy(),
            fires=(codes != 0).double().sum(0).numpy(), v_sum=v.sum(0).numpy(), v_sq=v.pow(2).sum(0).numpy(),
        )

    def result(self, components: torch.Tensor | None = None, amortize_tokens: int | None = None,
               n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Estimate]:
        """bits_per_token (with its CI) and its parts; with `components` (m, d) also the
        dictionary's bits and their share per token over `amortize_tokens` (default: evaluated)."""
        out: dict[str, Estimate] = {}
        for name in ("bits_per_token", "bits_index", "bits_values", "bits_residual", "bits_raw"):
            out[name] = self.stats.estimate(lambda s, k=name: _parts(s, self.precision)[k], n_boot, seed, level)
        if components is not None:
            total = dictionary_bits(components, self.precision)
            tokens = amortize_tokens or int(self.stats.sums()["n"])
            nan = float("nan")
            out["dictionary_bits"] = Estimate(total, nan, nan)
            out["dict_bits_per_token"] = Estimate(total / tokens, nan, nan)
        return out


def description_length(x: torch.Tensor, codes: torch.Tensor, recon: torch.Tensor,
                       decoder_norms: torch.Tensor | None = None, precision: float = DEFAULT_PRECISION) -> dict[str, float]:
    """The parts of the description length of one batch, without CIs: {name: bits per token}."""
    norms = torch.ones(codes.shape[1]) if decoder_norms is None else decoder_norms
    acc = DescriptionLength(norms, precision)
    acc.update(x, codes, recon)
    return {k: v.value for k, v in acc.result(n_boot=0).items()}
