"""Exact ground truth by enumerating every input in the support of D (batched, cached by model hash).

For the event "argmax of the last-position logits = t", one pass over the support gives the exact
probability of every target t at once: P[t] = sum_x p(x) 1[argmax(x) = t], accumulated in float64.
"Exact" up to the float32 forward pass: an input whose top two logits tie to float32 precision is
assigned to the lower index, as torch.argmax does, which is the same rule every method uses.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from torch import nn

from interplab import cache, ui
from interplab.errors import UserError
from interplab.lpe.problem import MAX_INPUTS, Problem
from interplab.runtime import single_thread
from interplab.subjects.chartf import model_hash

_VERSION = 1


@torch.no_grad()
def last_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Last-position logits (batch, V) of ids (batch, L); only the last position is unembedded."""
    h = model.body(model.embed(ids))[:, -1]  # (batch, d)
    return model.unembed(h)  # (batch, V)


def _support(dists: torch.Tensor) -> list[torch.Tensor]:
    return [torch.nonzero(row > 0).flatten() for row in dists]


def _chunks(dists: torch.Tensor, batch: int):
    """Every input of the support of D in mixed radix (last position fastest), in chunks:
    (ids (b, L), log p (b,) float64)."""
    support = _support(dists)
    sizes = [len(s) for s in support]
    total = math.prod(sizes)
    if total > MAX_INPUTS:
        raise UserError(f"{total} inputs is more than the 2^24 that exact enumeration allows")
    logp = [dists[i, s].log() for i, s in enumerate(support)]
    for start in range(0, total, batch):
        idx = torch.arange(start, min(start + batch, total))  # (b,)
        cols, lp = [], torch.zeros(len(idx), dtype=torch.float64)
        for pos in reversed(range(len(sizes))):  # last position varies fastest
            digit = idx % sizes[pos]
            idx = idx // sizes[pos]
            cols.append(support[pos][digit])
            lp += logp[pos][digit]
        yield torch.stack(cols[::-1], dim=1), lp  # (b, L), (b,)


@single_thread()
@torch.no_grad()
def enumerate_event_probs(model: nn.Module, dists: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """P[argmax = t] for every t: (V,) float64, by enumerating the support of D in mixed radix."""
    probs = torch.zeros(dists.shape[1], dtype=torch.float64)  # (V,)
    total = math.prod(int((row > 0).sum()) for row in dists)
    with ui.progress("exact ground truth", total) as advance:
        for ids, lp in _chunks(dists, batch):
            top = last_logits(model, ids).argmax(-1)  # (b,)
            probs.index_add_(0, top, lp.exp())
            advance(len(top))
    return probs


@single_thread()
@torch.no_grad()
def event_inputs(model: nn.Module, dists: torch.Tensor, targets: list[int],
                 batch: int = 8192) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each target, every input whose argmax it is: {t: (ids (k, L), log p (k,))}, by enumeration.

    With these, the exact hit probability sum_E q(x) and the exact variance of one importance
    sample, sum_E p(x)^2 / q(x) / P^2 - 1, of any proposal q are cheap sums (diagnostics).
    """
    found: dict[int, list] = {t: [] for t in targets}
    for ids, lp in _chunks(dists, batch):
        top = last_logits(model, ids).argmax(-1)  # (b,)
        for t in targets:
            keep = top == t
            if keep.any():
                found[t].append((ids[keep], lp[keep]))
    L = dists.shape[0]
    return {t: (torch.cat([a for a, _ in rows]) if rows else torch.zeros(0, L, dtype=torch.long),
                torch.cat([b for _, b in rows]) if rows else torch.zeros(0, dtype=torch.float64))
            for t, rows in found.items()}


def _key(model: nn.Module, dists: torch.Tensor) -> dict:
    digest = hashlib.sha256(dists.double().contiguous().numpy().tobytes()).hexdigest()[:16]
    return {"model": model_hash(model), "dists": digest, "v": _VERSION}


def event_probs(model: nn.Module, dists: torch.Tensor) -> torch.Tensor:
    """Cached `enumerate_event_probs`: (V,) float64, keyed by the weights' hash and the distribution."""
    key = _key(model, dists)
    folder = cache.entry("lpe-truth", key)
    tensors = cache.load_tensors(folder)
    if tensors is not None:
        return tensors["probs"]
    probs = enumerate_event_probs(model, dists)
    cache.save_tensors(folder, {"probs": probs}, key)
    return probs


def ground_truth(problem: Problem) -> float:
    """The exact probability of the problem's event (cached)."""
    return float(event_probs(problem.model, problem.dists)[problem.target])


def pick_targets(probs: torch.Tensor, low: float = 1e-9, high: float = 1e-3) -> list[int]:
    """Every symbol whose exact probability lies in [low, high], rarest first."""
    ok = [(float(p), t) for t, p in enumerate(probs.tolist()) if low <= p <= high]
    return [t for _, t in sorted(ok)]


def spread(items: list[int], k: int) -> list[int]:
    """At most `k` of `items`, evenly spaced through the list (its ends included): every item if k allows."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]
