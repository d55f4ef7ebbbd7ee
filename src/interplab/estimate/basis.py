"""Independence in a chosen basis: how much damage does "these components are independent" do?

Given activation samples X (n, d) at a site and a fitted decomposition (neurons, PCA, ICA, an SAE:
anything with `transform` / `inverse_transform`), presume the coordinates in that basis
independent: permute each code's column independently across the n samples (each coordinate drawn
from its own empirical marginal), decode, and run the rest of the network. What the decomposition
does not reconstruct (its error x - decode(encode(x))) is presumed independent per neuron
coordinate: each of its d columns is permuted on its own. A basis that explains nothing therefore
scores as the neurons do; permuting the error's rows as one block (the round-1 choice) instead
kept its joint distribution intact, so a basis that reconstructs badly looked better. Column means
are preserved, so E[x] at the site is unchanged in every basis; all damage comes from the
dependence the network's later layers relied on.

The accuracy of the presumption is `mean_error`: the squared error of the predicted output mean
(outputs on independent codes) against the output mean on the untouched samples, over the output's
total variance. `delta_loss` (the loss on permuted rows minus the clean loss) is kept for the
round-1 comparison only: a permuted row no longer belongs to its target, so that loss also counts
Var(out') and rewards a basis whose product distribution shrinks the output variance.

    damage = basis_damage(rest, x, {"neurons": identity, "pca": pca}, repeats=3)
    damage["pca"].delta_loss, damage["pca"].mean_error

`rest(x) -> RestOut(mean, var, loss)` runs the layers after the site on replaced activations and
returns the output's per-unit mean and variance over the samples (k,) and the mean loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class RestOut:
    """What the rest of the network did on one set of activations."""

    mean: torch.Tensor  # (k,) mean output over the samples
    var: torch.Tensor  # (k,) per-unit variance of the output over the samples
    loss: float


Rest = Callable[[torch.Tensor], RestOut]
_PERM_SEED = 7_368_787  # permutations must not reuse the stream that drew the data (sorted columns)


def rest_out(outputs: torch.Tensor, loss: float) -> RestOut:
    """RestOut from outputs (n, ..., k): statistics over every leading dimension."""
    flat = outputs.double().flatten(0, -2)  # (n, k)
    return RestOut(flat.mean(0), flat.var(0), float(loss))


@dataclass
class BasisDamage:
    """Damage of the independence presumption in one basis (means over `repeats` permutations)."""

    basis: str
    mean_error: float  # Σ_u (E out'_u - E out_u)² / Σ_u Var out_u
    delta_loss: float  # loss with independent codes - clean loss
    recon_delta_loss: float  # loss with the reconstruction alone (no permutation) - clean loss
    clean_loss: float = float("nan")  # the loss on the untouched activations
    per_repeat_delta_loss: list[float] = field(default_factory=list)
    per_repeat_mean_error: list[float] = field(default_factory=list)


def _permute_columns(a: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """a (n, k) with each column permuted by its own random permutation (seeded from `generator`).

    numpy's `permuted` shuffles every column in place in O(n k); an argsort of random keys was
    a third of the basis study's time.
    """
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return torch.from_numpy(rng.permuted(a.detach().cpu().numpy(), axis=0)).to(a.dtype)  # (n, k)


def independent_codes(x: torch.Tensor, decomposer: Any, generator: torch.Generator) -> torch.Tensor:
    """x (n, d) with every code, and every coordinate of the reconstruction error, permuted independently."""
    x = x.float()
    codes = decomposer.transform(x)  # (n, k)
    err = x - decomposer.inverse_transform(codes)  # (n, d)
    shuffled = _permute_columns(codes, generator)  # (n, k)
    return decomposer.inverse_transform(shuffled) + _permute_columns(err, generator)  # (n, d)


def mean_error(out: RestOut, clean: RestOut) -> float:
    """Σ_u (E out'_u - E out_u)² / Σ_u Var out_u: the error of the predicted output mean, normalised."""
    return float((out.mean - clean.mean).square().sum() / clean.var.sum().clamp_min(1e-30))


def basis_damage(rest: Rest, x: torch.Tensor, bases: Mapping[str, Any], repeats: int = 3,
                 seed: int = 0) -> dict[str, BasisDamage]:
    """Damage of presuming each basis's codes independent, for samples x (n, d) at the site."""
    with torch.no_grad():
        clean = rest(x)
        out: dict[str, BasisDamage] = {}
        for name, dec in bases.items():
            recon = rest(dec.inverse_transform(dec.transform(x.float())).to(x.dtype))
            losses, errors = [], []
            for r in range(repeats):
                g = torch.Generator().manual_seed(_PERM_SEED + seed * 1000 + r)  # apart from data seeds
                o = rest(independent_codes(x, dec, g).to(x.dtype))
                losses.append(o.loss - clean.loss)
                errors.append(mean_error(o, clean))
            out[name] = BasisDamage(name, float(np.mean(errors)), float(np.mean(losses)),
                                    recon.loss - clean.loss, clean.loss, losses, errors)
    return out
