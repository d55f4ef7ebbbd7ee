"""Planted weights for the `superposition` cruxes' controls: the claim true, or false, by construction.

Each function returns the same kind of object the trained models give (weights, or the classes
and statistics computed from weights by the experiment's own functions), so the controls go
through the very pipeline that scores the trained models.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interplab.experiments.superposition_figures import STICKY


def closed_form_weights(predicted: np.ndarray) -> np.ndarray:
    """W (R, S, 1, 2) realising each cell's closed-form phase: [1, -1] antipodal, [0, 1] dedicated,
    [1, 0] dropped (class 2, 1, 0)."""
    table = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])  # (3, 2) by class
    return table[predicted][:, :, None, :]  # (R, S, 1, 2)


def permuted_cells(W: np.ndarray, seed: int) -> np.ndarray:
    """The same weights assigned to randomly permuted cells (same class mix, no relation to r or s)."""
    R, S = W.shape[:2]
    flat = W.reshape(R * S, *W.shape[2:])
    order = np.random.default_rng(seed).permutation(R * S)
    return flat[order].reshape(W.shape)


def _polygon(k: int) -> np.ndarray:
    """k unit vectors evenly spaced in 2D: (2, k). k = 2: an antipodal pair on one axis."""
    angles = 2 * math.pi * np.arange(k) / k
    return np.stack([np.cos(angles), np.sin(angles)])


def _tetrahedron() -> np.ndarray:
    """4 unit vectors in 3D with pairwise cosine -1/3: (3, 4)."""
    v = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float).T
    return v / math.sqrt(3)


def polytope_weights(m: int, n: int, seed: int, noise: float = 0.01) -> torch.Tensor:
    """W (m, n) built from sticky geometries: antipodal pairs (D = 1/2), triangles (2/3), pentagons
    (2/5), tetrahedra (3/4), in orthogonal blocks of hidden dimensions, unused features zero; a
    small Gaussian perturbation keeps it from being exactly degenerate."""
    rng = np.random.default_rng(seed)
    W = np.zeros((m, n))
    blocks = [(_polygon(3), 2), (_polygon(5), 2), (_tetrahedron(), 3), (np.array([[1.0, -1.0]]), 1)]
    row = col = 0
    i = int(rng.integers(len(blocks)))
    while True:
        shape, dims = blocks[i % len(blocks)]
        k = shape.shape[1]
        if row + dims > m or col + k > n:
            break
        W[row:row + dims, col:col + k] = shape
        row, col, i = row + dims, col + k, i + 1
    W[:, :col] += noise * rng.standard_normal((m, col))
    return torch.from_numpy(W[:, rng.permutation(n)])


def random_weights(m: int, n: int, seed: int) -> torch.Tensor:
    """W (m, n) with Gaussian columns of log-uniform norms over 2m features: continuous D_i spread over
    (0, 1), with no preference for any sticky value."""
    rng = np.random.default_rng(seed)
    k = min(n, 2 * m)
    W = np.zeros((m, n))
    cols = rng.standard_normal((m, k))
    cols /= np.linalg.norm(cols, axis=0, keepdims=True)
    W[:, :k] = cols * np.exp(rng.uniform(np.log(0.6), np.log(1.6), size=k))
    return torch.from_numpy(W)


def mixing_weights(m: int, n: int, per_neuron: int, seed: int, noise: float = 0.02) -> np.ndarray:
    """W (m, n): neuron j carries `per_neuron` features with equal positive weight (features j*per_neuron..),
    a small non-negative perturbation added; per_neuron = 1 is the monosemantic layer."""
    rng = np.random.default_rng(seed)
    W = np.zeros((m, n))
    for j in range(m):
        for t in range(per_neuron):
            W[j, (j * per_neuron + t) % n] = 1.0
    return W + noise * np.abs(rng.standard_normal((m, n)))


def sticky_values() -> tuple[float, ...]:
    """The fractional sticky values the geometry crux counts (1 excluded: a dedicated dimension)."""
    return tuple(v for v in STICKY if v < 1.0)
