"""Planted positive and negative controls of the `hypotheses` cruxes, and their cache.

A control is data whose answer is known by construction, fed to the very pipeline function that
produces the real verdict (`weight_evidence`, `toy_gap_evidence`, `site_evidence`), at the real
subject's dimensions, rows, fits and units:

- planted weight layers (the tms weight cruxes, n features written in m neurons):
  `poly3` each neuron mixes 3 features of equal mass (1a true), `spread3` each feature spreads evenly
  over 3 neurons (1b true), `mono` one feature per neuron and the rest dropped (1a, 1b, 2b false;
  basis true), `random` Gaussian directions (no privileged basis: basis false), `antipodal` two
  features per neuron, e_j and -e_j (2b true). Each unit permutes features and neurons and jitters
  the non-zero weights by 10%, so units differ as trained instances do.
- planted activations (the gap cruxes, and the LM's weight cruxes through its SAE refits):
  `dictionary` sparse codes on random unit directions (`synthetic`, uniform firing; 2a and 2b-width
  true, neurons mix many features), `aligned` sparse codes on the neuron basis itself (1a/1b false,
  basis true), `gaussian` the Gaussian with the dictionary's mean and covariance (2a false),
  `dense` d always-active features (uniform magnitudes on [0.5, 1.5]) on orthonormal directions
  (non-Gaussian but not sparse: 2a-sparse false), `orthogonal` sparse codes on d/2 orthonormal
  directions (fewer features than dims: 2b-width false).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from interplab.experiments.hypotheses_weights import Layer
from interplab.metrics import hypotheses as H
from interplab.verdicts import Evidence, Verdict, cached_evidence, judge

# crux -> (positive family, negative family)
WEIGHT_CONTROLS = {
    "1a": ("poly3", "mono"), "1a-signblind": ("poly3", "mono"), "1a-frac": ("poly3", "mono"),
    "1b": ("spread3", "mono"), "1b-frac": ("spread3", "mono"), "basis": ("mono", "random"),
    "2b": ("antipodal", "mono"),
}
ACTIVATION_CONTROLS = {
    "1a": ("dictionary", "aligned"), "1a-frac": ("dictionary", "aligned"), "1b": ("dictionary", "aligned"),
    "1b-frac": ("dictionary", "aligned"), "basis": ("aligned", "dictionary"), "2a": ("dictionary", "gaussian"),
    "2a-sparse": ("dictionary", "dense"), "2b-width": ("dictionary", "orthogonal"),
}
GAP_CONTROLS = {"2a-sparse": ("dictionary", "dense"), "2a": ("dictionary", "gaussian")}  # the toy's


def planted_layer(family: str, n: int, m: int, seed: int, rectified: bool = True) -> Layer:
    """One planted layer (n features in m neurons) of `family`, permuted and jittered by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.zeros(n, m, dtype=torch.float64)  # (n, m) row i: feature i's weights into the neurons
    if family == "poly3":
        for j in range(m):
            for t in range(3):
                W[(j * n // m + t) % n, j] = 1.0
    elif family == "spread3":
        for i in range(n):
            for t in range(min(3, m)):
                W[i, (i + t) % m] = 3 ** -0.5
    elif family == "mono":
        for j in range(min(n, m)):
            W[j, j] = 1.0
    elif family == "antipodal":
        for j in range(min(m, n // 2)):
            W[2 * j, j], W[2 * j + 1, j] = 1.0, -1.0
    elif family == "random":
        W = torch.randn(n, m, generator=gen, dtype=torch.float64) / m**0.5
    else:
        raise ValueError(f"unknown planted family {family!r}")
    jitter = (1 + 0.1 * torch.randn(n, m, generator=gen, dtype=torch.float64)).abs()  # (n, m)
    W = W * jitter
    W = W[torch.randperm(n, generator=gen)][:, torch.randperm(m, generator=gen)]
    return Layer(W, torch.ones(n, dtype=torch.float64), rectified)


def planted_rows(family: str, n_rows: int, d: int, features_per_dim: float, active: float,
                 seed: int) -> torch.Tensor:
    """Planted activations (n_rows, d) of `family` (module docstring), drawn with `seed`."""
    from interplab.subjects import load_subject
    from interplab.subjects.synthetic import sample_activations

    n = {"dictionary": round(features_per_dim * d), "gaussian": round(features_per_dim * d), "aligned": d,
         "orthogonal": max(1, d // 2), "dense": d}[family]
    active = n if family == "dense" else min(active, n)  # dense: every feature fires on every row
    subject = load_subject("synthetic", n_features=n, d=d, firing="uniform", mean_active=active, seed=seed)
    gen = torch.Generator().manual_seed(seed + 101)
    batch = sample_activations(subject, n_rows, gen)
    if family == "dictionary":
        return batch.acts.double()  # (n_rows, d)
    if family == "gaussian":
        return H.gaussian_like(batch.acts.double(), n_rows, gen)  # (n_rows, d)
    if family == "aligned":
        return batch.codes.double()  # (n_rows, d): feature j is neuron j
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=torch.float64))  # (d, n) orthonormal columns
    return batch.codes.double() @ q.T  # (n_rows, d): `orthogonal` and `dense`


def control_evidence(name: str, settings: dict[str, Any], cruxes: tuple[str, ...],
                     compute: Callable[[], dict[str, Evidence]]) -> dict[str, Evidence]:
    """Evidence of one control for each of `cruxes`, cached per crux (`cached_evidence`, keyed by the
    settings and the code); `compute` (every crux at once) runs at most once, on the first miss."""
    memo: dict[str, dict[str, Evidence]] = {}

    def one(crux: str) -> Evidence:
        if "all" not in memo:
            memo["all"] = compute()
        return memo["all"][crux]

    out = {}
    for crux in cruxes:
        out[crux] = cached_evidence(f"hypotheses/{name}/{crux}", settings, lambda c=crux: one(c))
    return out


def families_for(cruxes: tuple[str, ...], table: dict[str, tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """family -> the cruxes it controls (positive or negative), among `cruxes`."""
    out: dict[str, list[str]] = {}
    for crux in cruxes:
        for fam in table.get(crux, ()):
            out.setdefault(fam, []).append(crux)
    return {fam: tuple(dict.fromkeys(cs)) for fam, cs in out.items()}


def pick(crux: str, by_family: dict[str, dict[str, Evidence]], table: dict[str, tuple[str, str]]
         ) -> tuple[Evidence | None, Evidence | None]:
    """(positive, negative) evidence of `crux` from each family's results."""
    pos, neg = table[crux]
    return by_family.get(pos, {}).get(crux), by_family.get(neg, {}).get(crux)


class Judged(NamedTuple):
    """A verdict and the side numbers of the evidence behind it (per-unit values, real and null gaps)."""

    verdict: Verdict
    extra: dict[str, Any]


def judged(crux: str, ev: Evidence, subject: str, pos: Evidence | None, neg: Evidence | None, scale: str,
           note: str = "") -> Judged:
    """`judge` with the evidence's extras kept for results.json."""
    return Judged(judge(crux, ev, subject, pos, neg, scale, note=note), dict(ev.extra))
