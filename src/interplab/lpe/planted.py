"""Planted low-probability problems whose answer to a crux is known by construction (the controls).

A planted model has the interface every LPE method reads (`embed`, `body`, `unembed`,
`forward_onehot`, `vocab_size`): position-specific token embeddings E[pos, token] (d,), summed over
the positions (`body` returns the causal running sum, so the last position holds the whole sum),
optionally mapped onto a circle, then a linear unembedding. Three families, each with exact
ground truth by enumerating a small support:

- `key`: target k fires only when every position holds the token of its key (p ~ 1e-9..1e-5).
  The target logit's gradient points straight at the key tokens, so importance sampling finds the
  event at once, while a sample of activations (the count of key tokens) never reaches it.
- `cone`: three positions whose tokens are a fine lattice of Gaussian values, so the activation is
  (almost exactly) N(0, I_3) and whitened coordinates are independent; the target wins inside a
  narrow cone around a direction. QLD's presumption (the component along the shortest direction is
  independent of the rest) holds, and its n^2 pairs see far below the sampling floor; a product
  proposal over positions cannot concentrate on the cone's narrow cross-section.
- `phase`: the activation is (cos phi, sin phi) with phi = 2 pi (sum of per-token integers) / m, and
  output j wins when phi is nearest 2 pi j / m; targets are common (p ~ 1e-3..0.1). The target
  logit's gradient averages to zero over the inputs, and the activations lie on a circle (a and b
  are dependent by construction), so neither family has information naive sampling lacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from interplab.lpe.groundtruth import spread

V = 64
"""Vocabulary of every planted model (the chartf size, so the same methods and shapes apply)."""


class PlantedModel(nn.Module):
    """ids (batch, L) -> logits (batch, L, V): sum of E[pos, token] over positions, then `unembed`.

    `circle`: the first summed coordinate is a phase in radians and the body returns (cos, sin).
    """

    def __init__(self, emb: torch.Tensor, W: torch.Tensor, b: torch.Tensor, circle: bool = False):
        super().__init__()
        self.register_buffer("emb", emb.float())  # (L, V, d)
        self.circle = circle
        d_out = 2 if circle else emb.shape[-1]
        self.unembed = nn.Linear(d_out, W.shape[0])
        with torch.no_grad():
            self.unembed.weight.copy_(W)
            self.unembed.bias.copy_(b)
        self.unembed.requires_grad_(False)

    @property
    def vocab_size(self) -> int:
        return self.emb.shape[1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1])
        return self.emb[pos, ids]  # (batch, L, d)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        h = x.cumsum(1)  # (batch, L, d) causal: position i holds the sum over positions <= i
        if self.circle:
            return torch.stack([h[..., 0].cos(), h[..., 0].sin()], -1)  # (batch, L, 2)
        return h

    def forward_onehot(self, onehot: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("blv,lvd->bld", onehot, self.emb[: onehot.shape[1]])  # (batch, L, d)
        return self.unembed(self.body(x))  # (batch, L, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.body(self.embed(ids)))  # (batch, L, V)


@dataclass(frozen=True)
class PlantedGroup:
    """One (model, distribution) group of a planted family: its targets are fixed by construction."""

    name: str
    model: PlantedModel
    dists: torch.Tensor  # (L, V) float64
    targets: list[int]


def _skewed_rows(rng: np.random.Generator, L: int, symbols: np.ndarray, decay: tuple[float, float]) -> torch.Tensor:
    """(L, V) rows over `symbols`: weight decay**rank in a random order per position."""
    out = torch.zeros(L, V, dtype=torch.float64)
    for pos in range(L):
        order = rng.permutation(symbols)
        out[pos, order] = torch.tensor(rng.uniform(*decay) ** np.arange(len(symbols)))
    return out / out.sum(-1, keepdim=True)


def key_group(seed: int, L: int = 4, n_symbols: int = 12, n_targets: int = 3, scale: float = 3.0,
              p_range: tuple[float, float] = (1e-8, 1e-5)) -> PlantedGroup:
    """Targets 1..n_targets fire only on their key (one token per position); the default output 0
    wins otherwise. Keys are drawn so that each target's p = prod_pos dists[pos, key] lies in
    `p_range` (log-uniform aim); keys differ at the first position, so the events are disjoint."""
    rng = np.random.default_rng(seed)
    symbols = np.arange(n_targets + 2, n_targets + 2 + n_symbols)
    dists = _skewed_rows(rng, L, symbols, (0.6, 0.8))
    logd = dists[:, symbols].log().numpy()  # (L, S)
    emb = torch.zeros(L, V, n_targets)
    W, b = torch.zeros(V, n_targets), torch.full((V,), -30.0)
    b[0] = 0.0
    used_first: set[int] = set()
    for k in range(n_targets):
        aim = math.log(10 ** rng.uniform(*np.log10(p_range)))
        key = _key_near(rng, logd, aim, used_first)
        used_first.add(key[0])
        for pos, s in enumerate(key):
            emb[pos, symbols[s], k] = 1.0
        W[1 + k, k] = scale
        b[1 + k] = -scale * (L - 0.5)  # logit scale * (matches - L + 1/2): positive only on the full key
    return PlantedGroup(f"key-{seed}", PlantedModel(emb, W, b), dists, list(range(1, n_targets + 1)))


def _key_near(rng: np.random.Generator, logd: np.ndarray, aim: float, used_first: set[int]) -> list[int]:
    """A key (one symbol index per position) whose log-probability is closest to `aim` among random tries."""
    best, gap = None, math.inf
    for _ in range(400):
        key = [int(rng.integers(logd.shape[1])) for _ in range(logd.shape[0])]
        if key[0] in used_first:
            continue
        g = abs(sum(logd[pos, s] for pos, s in enumerate(key)) - aim)
        if g < gap:
            best, gap = key, g
    return best


CONE_VALUES = np.linspace(-5.0, 5.0, 61)
"""Token values of the cone family (tokens 1..61), each position shifted by its own random offset."""


def _frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random orthonormal frame (e, f1, f2) of R^3: the cone's axis is off every lattice direction."""
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return q[:, 0], q[:, 1], q[:, 2]


def cone_group(seed: int, sharp: float = 10.0, p_range: tuple[float, float] = (1e-7, 1e-5),
               lam: float = 2.0) -> PlantedGroup:
    """h = (v(x_0), v(x_1), v(x_2)): v on a lattice of step 1/6 (shifted per position), weights prop. to
    exp(-v^2/2 s^2) (s drawn near 1 per position), so h is nearly N(0, diag(s^2)). Target 1 wins on
    the cone e.h - sharp * max(|f1.h|, |f2.h|) >= r_1 around a random axis e, target 2 on the mirrored
    cone around -e: each target competes with four outputs (one per face), and lam e.h in the target
    logits keeps the cones apart (it needs r_2 <= 3 r_1 and r_1 <= 3 r_2). Each radius is set so that
    the exact lattice probability of its cone is a log-uniform draw from `p_range`."""
    rng = np.random.default_rng(seed)
    L, tokens = 3, np.arange(1, 1 + len(CONE_VALUES))
    step = CONE_VALUES[1] - CONE_VALUES[0]
    sd = rng.uniform(0.85, 1.15, size=L)
    dists = torch.zeros(L, V, dtype=torch.float64)
    emb = torch.zeros(L, V, L)
    values = []
    for pos in range(L):
        values.append(CONE_VALUES + rng.uniform(-step / 2, step / 2))
        dists[pos, tokens] = torch.tensor(np.exp(-0.5 * (values[-1] / sd[pos]) ** 2))
        emb[pos, tokens, pos] = torch.tensor(values[-1], dtype=torch.float32)
    dists /= dists.sum(-1, keepdim=True)
    e, f1, f2 = _frame(rng)
    W, b = torch.zeros(V, L), torch.full((V,), -100.0)
    out = 50  # competitor outputs 50..57
    for target, sign in ((1, 1.0), (2, -1.0)):
        aim = 10 ** rng.uniform(*np.log10(p_range))
        r = _radius(values, dists[:, tokens].numpy(), sign * e, f1, f2, sharp, aim)
        W[target], b[target] = torch.tensor(sign * lam * e), 0.0
        for s in (f1, -f1, f2, -f2):
            # competitor logit: sign*lam e.h + r - (sign e - sharp s).h ; the target beats it iff
            # (sign e - sharp s).h >= r
            W[out] = torch.tensor(sign * lam * e - (sign * e - sharp * s))
            b[out] = r
            out += 1
    return PlantedGroup(f"cone-{seed}", PlantedModel(emb, W, b), dists, [1, 2])


def _radius(values: list[np.ndarray], weights: np.ndarray, e: np.ndarray, f1: np.ndarray, f2: np.ndarray,
            sharp: float, aim: float) -> float:
    """The r at which the lattice probability of {e.h - sharp max(|f1.h|, |f2.h|) >= r} is closest to
    `aim`: a weighted quantile of that margin over the whole lattice, placed midway between two of its
    values (so float32 rounding never decides an input)."""
    h = np.stack(np.meshgrid(*values, indexing="ij"), -1).reshape(-1, 3)  # (n^3, 3)
    w = np.einsum("i,j,k->ijk", *weights).reshape(-1)  # (n^3,)
    m = h @ e - sharp * np.maximum(np.abs(h @ f1), np.abs(h @ f2))  # (n^3,)
    order = np.argsort(-m)
    tail = np.cumsum(w[order])  # P(margin >= m[order[i]])
    i = int(np.clip(np.searchsorted(tail, aim), 1, len(m) - 1))
    return float(0.5 * (m[order[i - 1]] + m[order[i]]))


def phase_group(seed: int, L: int = 4, n_symbols: int = 16, m: int = 64, kappa: float = 40.0,
                p_range: tuple[float, float] = (2e-3, 0.2), max_targets: int = 4) -> PlantedGroup:
    """phi = 2 pi sum_pos c(pos, x_pos) / m, c random integers; output j in 0..m-1 has logit
    kappa cos(phi - 2 pi j / m), so j wins exactly when sum c = j mod m. Targets: up to `max_targets`
    outputs with p in `p_range` (computed exactly here from the convolution of the residues)."""
    rng = np.random.default_rng(seed)
    symbols = np.arange(1, 1 + n_symbols)
    dists = _skewed_rows(rng, L, symbols, (0.75, 0.9))
    c = rng.integers(0, m, size=(L, n_symbols))  # (L, S) residue of each token
    emb = torch.zeros(L, V, 1)
    for pos in range(L):
        emb[pos, symbols, 0] = torch.tensor(2 * math.pi * c[pos] / m, dtype=torch.float32)
    angles = 2 * math.pi * np.arange(m) / m
    W = torch.zeros(V, 2)
    W[:m] = kappa * torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    b = torch.full((V,), -100.0)
    b[:m] = 0.0
    probs = np.zeros(m)
    probs[0] = 1.0
    for pos in range(L):
        step = np.zeros(m)
        np.add.at(step, c[pos], dists[pos, symbols].numpy())
        probs = np.real(np.fft.ifft(np.fft.fft(probs) * np.fft.fft(step)))  # cyclic convolution
    ok = [j for j in np.argsort(probs) if p_range[0] <= probs[j] <= p_range[1]]
    pick = spread([int(j) for j in ok], max_targets)
    return PlantedGroup(f"phase-{seed}", PlantedModel(emb, W, b, circle=True), dists, sorted(set(pick)))


FAMILIES = {"key": key_group, "cone": cone_group, "phase": phase_group}
RANGES = {"key": (1e-3, 1.0), "cone": (1e-2, 0.5)}
"""Families whose targets are placed below the sampling floor: p in [lo * p_max, hi * p_max]. The cone
spans the decades where its claim is about QLD's regime: below ~50 / n^2 QLD's n^2 pairs (which
hinge on a few extreme a's and b's) may count no hit at all."""


def planted_groups(family: str, n: int, seed: int = 0, p_max: float = 1e-5) -> list[PlantedGroup]:
    """n groups of a planted family, from seeds seed*1000 + 0..n-1; targets of the rare families have
    p in p_max * RANGES[family] (give 1 / the largest budget: p x budget < 1 as in the real run)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown planted family '{family}'; choose from {', '.join(FAMILIES)}")
    kw = {"p_range": (RANGES[family][0] * p_max, RANGES[family][1] * p_max)} if family in RANGES else {}
    return [FAMILIES[family](seed * 1000 + i, **kw) for i in range(n)]
