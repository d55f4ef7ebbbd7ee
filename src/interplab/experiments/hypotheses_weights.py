"""The weight-based cruxes (1a, 1a-signblind, 1a-frac, 1b, 1b-frac, basis, 2b) as one pipeline.

    ev = weight_evidence(layers, n_rotations, seed, "trained instances")   # {crux id: Evidence}

A `Layer` is one unit of replication: the feature directions written in the neuron basis and the
features' second moments, from one trained toy instance, one SAE refit on the LM, or one planted
control matrix. Each statistic is computed per layer and the CI is a t interval over the layers
(`from_refits`): the unit is what varies between replications, never the neurons of one fit.
Real subjects and planted controls go through `weight_evidence` alike.

Per layer:
- 1a: median PR_j over live neurons (activation mass, positive part on rectified sites); null 1.5.
- 1a-signblind: the same with the sign-blind share (shown where the site is rectified).
- 1a-frac / 1b-frac (round-1 forms): fraction of units with PR >= 1.5; null the same fraction under
  Haar rotations of the neuron basis, averaged over rotations and layers (a point null, as then).
- 1b: median PR_i over represented features; null 1.5.
- basis: mean over rotations of the median log PR_j of the rotated basis, minus the neurons' median
  log PR_j (1a's mass); null 0 (neurons no different from random directions).
- 2b: features with ||W_i|| > `REPRESENTED` per neuron (trained toys only); null 1.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from interplab.metrics import hypotheses as H
from interplab.verdicts import Evidence, from_refits

REPRESENTED = 0.5  # a tms feature is represented when ||W_i|| exceeds this (as in superposition-intro)
WEIGHT_CRUXES = ("1a", "1a-signblind", "1a-frac", "1b", "1b-frac", "basis", "2b")
FIXED_NULLS = {"1a": H.POLY_THRESHOLD, "1a-signblind": H.POLY_THRESHOLD, "1b": H.POLY_THRESHOLD,
               "basis": 0.0, "2b": 1.0}


class Layer(NamedTuple):
    """One replication of a layer's features."""

    directions: torch.Tensor  # (n_features, m) row i: feature i's weights into the m neurons
    second_moment: torch.Tensor  # (n_features,) E[code_i^2]
    rectified: bool  # ReLU-like neurons: only positive weights carry activation mass (1a)


@functools.lru_cache(maxsize=8)
def rotations(d: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """`n` Haar rotations (d, d) drawn from `seed`: every layer of dimension d in one run (real and
    planted alike) is compared with the same ones."""
    gen = torch.Generator().manual_seed(seed * 7919 + d)
    return tuple(H.random_rotation(d, gen) for _ in range(n))


def layer_values(layer: Layer, rots: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Every weight statistic of one layer (and the per-layer rotation nulls of the -frac forms)."""
    dirs, mom, rect = layer.directions.double(), layer.second_moment.double(), layer.rectified
    st1a = H.neuron_polysemanticity(dirs, mom, rect)
    st1b = H.feature_polysemanticity(dirs)
    frac_a, frac_b, log_a = [], [], []
    for q in rots:
        rotated = dirs @ q  # (n_features, m)
        ra = H.neuron_polysemanticity(rotated, mom, rect)
        frac_a.append(ra.fraction)
        log_a.append(H.median_log_pr(ra))
        frac_b.append(H.feature_polysemanticity(rotated).fraction)
    return {
        "1a": st1a.median, "1a-signblind": H.neuron_polysemanticity(dirs, mom, False).median,
        "1a-frac": st1a.fraction, "1a-frac-null": float(np.mean(frac_a)),
        "1b": st1b.median, "1b-frac": st1b.fraction, "1b-frac-null": float(np.mean(frac_b)),
        "basis": float(np.mean(log_a)) - H.median_log_pr(st1a),
        "2b": H.represented_per_dimension(dirs.T, REPRESENTED),
    }


def weight_evidence(layers: list[Layer], n_rotations: int, seed: int, what: str) -> dict[str, Evidence]:
    """Evidence for every weight crux from independent `layers` (the units), t interval over them."""
    rots = rotations(layers[0].directions.shape[1], n_rotations, seed)
    rows = [layer_values(layer, rots) for layer in layers]
    col = {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]}
    how = f"t interval over {len(layers)} {what}"
    out = {}
    for crux in WEIGHT_CRUXES:
        null = float(np.nanmean(col[crux + "-null"])) if crux.endswith("-frac") else FIXED_NULLS[crux]
        extra = {"rotation_null_per_unit": col[crux + "-null"].tolist()} if crux.endswith("-frac") else {}
        out[crux] = from_refits(col[crux], null, how, extra=extra)
    return out
