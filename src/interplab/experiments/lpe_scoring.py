"""Scoring of the `lpe` experiment: Itakura–Saito loss, held-out calibration, and each crux's evidence.

Rows are dicts with `group` (the (model, distribution) pair: the resampling unit), `target`,
`truth`, `method`, `budget` and `estimate`. `score` floors zeros and adds the raw losses;
`calibrate` adds the fitted ones (an affine map in log10 space per method and budget, as published,
with zero estimates given their own fitted level; fitted leave-one-group-out: a group is scored with
maps fitted on the other groups only, since the targets of one group share a sample); `crux_evidence` turns the fitted losses at the largest
budget into a statistic with a cluster-bootstrap CI over groups.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize

from interplab.verdicts import Evidence, bootstrap_units

LN10 = math.log(10.0)


def is_loss(p: Any, q: Any) -> np.ndarray:
    """Itakura–Saito loss p/q - ln(p/q) - 1 (q already floored above 0)."""
    z = np.log(np.asarray(p, dtype=float)) - np.log(np.asarray(q, dtype=float))
    return np.expm1(z) - z


def score(rows: list[dict], floor: float) -> list[dict]:
    """Add `q` (estimate raised to the floor), `floored`, `is_loss` and `log_se` to each row."""
    out = []
    for r in rows:
        q = max(float(r["estimate"]), floor)
        p = float(r["truth"])
        out.append({**r, "q": q, "floored": r["estimate"] < floor, "is_loss": float(is_loss(p, q)),
                    "log_se": (math.log10(q) - math.log10(p)) ** 2})
    return out


def fit_map(lq: np.ndarray, lp: np.ndarray) -> tuple[float, float]:
    """(alpha, beta) minimising the mean IS loss of log10 q' = alpha log10 q + beta (q' capped at 1)."""
    def loss(v: np.ndarray) -> float:
        z = LN10 * (lp - np.clip(v[0] * lq + v[1], -300, 0))
        return float(np.mean(np.expm1(np.minimum(z, 700)) - z))

    res = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10})
    return float(res.x[0]), float(res.x[1])


def fit_zero_level(lp: np.ndarray) -> float:
    """log10 of the constant estimate c minimising the mean IS loss over truths 10^lp: c = mean(p)
    (d/dc of mean(p/c - ln(p/c) - 1) = mean(1/c - p/c^2) = 0 there)."""
    return float(np.log10(np.mean(10.0 ** np.asarray(lp, dtype=float))))


def calibrate(scored: list[dict]) -> list[dict]:
    """Leave-one-group-out calibration per (method, budget): each group's rows get `q_fitted`,
    `is_loss_fitted` and `log_se_fitted` from maps fitted on every other group only.

    Non-zero estimates go through an affine map in log10 space fitted (IS loss) on the other groups'
    non-zero estimates, as published. Zero estimates (raised to the floor) carry no scale to map, and
    a single one in the fit would bend the affine map to reach down to the floor, so they get their
    own level: the IS-optimal constant for the other groups' zero estimates of that method and budget
    (for naive sampling below its floor, that is the whole estimate), or, when those groups have no
    zero estimate, for all their targets (a zero read as "no information"). With no other group at
    all, the maps are the identity.
    """
    cells: dict[tuple, list[dict]] = {}
    for r in scored:
        cells.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for rows in cells.values():
        for group in dict.fromkeys(r["group"] for r in rows):
            fit = [r for r in rows if r["group"] != group]
            hits, zeros = [r for r in fit if not r["floored"]], [r for r in fit if r["floored"]]
            alpha, beta = (fit_map(np.log10([r["q"] for r in hits]), np.log10([r["truth"] for r in hits]))
                           if hits else (1.0, 0.0))
            zero = fit_zero_level(np.log10([r["truth"] for r in zeros or fit])) if fit else None
            for r in (r for r in rows if r["group"] == group):
                lq = alpha * math.log10(r["q"]) + beta
                lq = min(zero if (r["floored"] and zero is not None) else lq, 0.0)
                out.append({**r, "q_fitted": 10**lq, "is_loss_fitted": float(is_loss(r["truth"], 10**lq)),
                            "log_se_fitted": (lq - math.log10(r["truth"])) ** 2})
    return out


def _by_target(scored: list[dict], method: str, budget: int, key: str) -> dict[tuple, float]:
    return {(r["group"], r["target"]): r[key] for r in scored if r["method"] == method and r["budget"] == budget}


def pairwise_evidence(scored: list[dict], winner: str, loser: str, budget: int, seed: int = 0,
                      transform: str = "loss") -> Evidence:
    """Mean over targets of f(fitted IS loss(loser)) - f(fitted IS loss(winner)) at `budget` (> 0 favours
    the winner), f the identity ("loss") or log(1 + .) ("log1p"), with a percentile bootstrap that
    resamples whole (model, distribution) groups."""
    f = np.log1p if transform == "log1p" else (lambda v: v)
    w = {k: float(f(v)) for k, v in _by_target(scored, winner, budget, "is_loss_fitted").items()}
    lo = {k: float(f(v)) for k, v in _by_target(scored, loser, budget, "is_loss_fitted").items()}
    wr, lr = _by_target(scored, winner, budget, "is_loss"), _by_target(scored, loser, budget, "is_loss")
    keys = sorted(set(w) & set(lo), key=str)
    groups = list(dict.fromkeys(k[0] for k in keys))
    units = np.array([[sum(lo[k] - w[k] for k in keys if k[0] == g), sum(k[0] == g for k in keys)]
                      for g in groups]).reshape(-1, 2)  # (G, 2): per group the sum of differences, targets
    extra = {"winner": winner, "loser": loser, "budget": budget, "transform": transform, "targets": len(keys),
             "groups": len(groups),
             "wins": int(sum(lo[k] > w[k] for k in keys)),
             "raw_difference": float(np.mean([lr[k] - wr[k] for k in keys])) if keys else math.nan,
             "per_group": [float(u[0] / u[1]) for u in units]}
    return bootstrap_units(units, 0.0, f"cluster bootstrap over {len(groups)} (model, distribution) groups",
                           stat=lambda u: u[:, 0].sum() / u[:, 1].sum(), seed=seed, extra=extra)
