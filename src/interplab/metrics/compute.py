"""Compute-equivalent loss: what training compute a model family needs to reach a given loss.

    ladder = fit_ladder([LadderPoint("r0", 1.2e9, 2.95, 0.01), ...])   # rungs of one family, the model last
    eq = compute_equivalent(2.40, ladder)      # eq.fraction = C_eq / C_model, eq.where, eq.ci (log10)

The law is L(C) = a (C / C_top)^-b + c (Gao et al.'s irreducible-loss power law), C_top the top
rung's compute. The top rung is the model whose readings are converted, and the curve is pinned to
its measured loss (a = L_top - c), so that the model itself reads as exactly its own compute; b > 0
and 0 <= c < min loss are fitted by weighted least squares (weights 1 / SE^2 of each rung) with
scipy (`minimize_scalar` over log b, c in closed form for each b). Uncertainty: a wild bootstrap,
every rung's loss (the top one's too) redrawn about the fitted law with Gaussian noise of standard
deviation max(its SE, its own |residual| about the law) and the law refitted, `n_draws` times; the
draws are kept in the ladder and reused.

C_eq(L) = C_top ((L - c) / a)^(-1/b), and the fraction is C_eq / C_model (C_model = C_top unless
given). The ladder's range [C_min, C_max] is never left: a loss worse than the fitted loss at the
smallest rung is "below" the ladder and reported at C_min (the fraction is then at most
C_min / C_model: an upper bound), one better than the top rung (or below c) is "above" and
reported at C_max. CIs (on log10 of the fraction) come from the bootstrap draws, with the loss
itself drawn from N(L, se^2 + scatter^2), scatter being the rungs' RMS residual about the law (a
model of the family lies that far from the curve: a prediction interval, not only the curve's
confidence interval), each draw clamped the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar

from interplab.errors import UserError


class LadderPoint(NamedTuple):
    """One model of the family: its training compute (FLOPs) and measured loss."""

    name: str
    compute: float
    loss: float
    loss_se: float = 0.0
    info: dict[str, Any] = {}


def power_law(C: Any, a: float, b: float, c: float, c_top: float) -> Any:
    return a * (np.asarray(C, dtype=float) / c_top) ** (-b) + c


@dataclass
class Ladder:
    """A fitted L(C): `theta` = (a, b, c) and `boot` (n_draws, 3), the bootstrap refits."""

    points: list[LadderPoint]
    theta: np.ndarray
    boot: np.ndarray
    c_top: float
    c_model: float
    scatter: float = 0.0
    """RMS residual of the rungs about the law (dof-corrected): how far one model of the family lies
    from the curve, added to every loss converted (a prediction interval, not only the curve's)."""

    @property
    def c_min(self) -> float:
        return min(p.compute for p in self.points)

    @property
    def c_max(self) -> float:
        return max(p.compute for p in self.points)

    def loss_at(self, C: Any, theta: np.ndarray | None = None) -> Any:
        a, b, c = self.theta if theta is None else theta
        return power_law(C, a, b, c, self.c_top)

    def draws(self, n: int, seed: int = 0) -> np.ndarray:
        """n parameter draws (n, 3): the bootstrap refits, resampled (NaN when there are none)."""
        if len(self.boot) == 0:
            return np.full((n, 3), np.nan)
        return self.boot[np.random.default_rng(seed).integers(0, len(self.boot), n)]

    def loss_noise(self, n: int, seed: int = 0) -> np.ndarray:
        """n draws (n,) of one model's deviation from the law, N(0, scatter^2)."""
        return self.scatter * np.random.default_rng(seed + 7).standard_normal(n)

    def log10_fraction(self, loss: Any, theta: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """log10(C_eq / C_model) clamped to the ladder, and where (-1 below, 0 inside, 1 above).

        `loss` and `theta` broadcast: loss (...,), theta (3,) or (..., 3)."""
        th = self.theta if theta is None else np.asarray(theta, dtype=float)
        a, b, c = (th[..., i] for i in range(3))
        L = np.asarray(loss, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            excess = (L - c) / a
            logc = np.log10(self.c_top) - np.log10(np.where(excess > 0, excess, np.nan)) / b  # log10 C_eq
        lo, hi = math.log10(self.c_min), math.log10(self.c_max)
        where = np.where(np.isnan(logc), 1, np.where(logc < lo, -1, np.where(logc > hi, 1, 0)))
        logc = np.where(where == -1, lo, np.where(where == 1, hi, logc))
        bad = ~np.isfinite(L) | ~np.isfinite(a)
        return np.where(bad, np.nan, logc - math.log10(self.c_model)), where

    def to_dict(self) -> dict[str, Any]:
        a, b, c = (float(v) for v in self.theta)
        se = self.boot.std(0, ddof=1) if len(self.boot) > 1 else np.full(3, np.nan)
        return {"law": "L(C) = a (C / C_top)^-b + c, a = L_top - c", "scatter": self.scatter, "a": a, "b": b, "c": c, "se": se.tolist(), "c_top": self.c_top,
                "c_model": self.c_model, "c_min": self.c_min, "c_max": self.c_max,
                "points": [{"name": p.name, "compute": p.compute, "loss": p.loss, "loss_se": p.loss_se,
                            "fit": float(self.loss_at(p.compute)), **p.info} for p in self.points]}


def _fit(C: np.ndarray, L: np.ndarray, w: np.ndarray, c_top: float, l_top: float) -> np.ndarray | None:
    """(a, b, c) of the law pinned at (c_top, l_top), a = l_top - c, by weighted least squares.

    For a fixed b the law is linear in c (L - l_top x = c (1 - x), x = (C / c_top)^-b), so c has a
    closed form (clamped to [0, min loss)) and b is found by a bounded scalar search on log b.
    """
    ceiling = min(float(L.min()), l_top) - 1e-9
    if ceiling <= 0:
        return None

    def solve(log_b: float) -> tuple[float, float]:
        x = (C / c_top) ** (-math.exp(log_b))  # (rungs,)
        u, y = 1.0 - x, L - l_top * x
        den = float(np.sum(w * u * u))
        c = float(np.clip(np.sum(w * u * y) / den, 0.0, ceiling)) if den > 0 else 0.0
        r = y - c * u
        return float(np.sum(w * r * r)), c

    res = minimize_scalar(lambda lb: solve(lb)[0], bounds=(math.log(1e-4), math.log(10.0)), method="bounded",
                          options={"xatol": 1e-6})
    if not np.isfinite(res.fun):
        return None
    b = math.exp(float(res.x))
    c = solve(float(res.x))[1]
    return np.array([l_top - c, b, c])


def fit_ladder(points: list[LadderPoint], model_compute: float | None = None, n_draws: int = 200,
               seed: int = 0) -> Ladder:
    """Fit the law to at least 4 rungs, pinned at the largest (see the module doc)."""
    if len(points) < 4:
        raise UserError(f"a compute ladder needs at least 4 rungs to fit a C^-b + c, got {len(points)}")
    C = np.array([p.compute for p in points], dtype=float)
    L = np.array([p.loss for p in points], dtype=float)
    se = np.array([p.loss_se for p in points], dtype=float)
    if not (np.all(C > 0) and np.all(np.isfinite(L))):
        raise UserError("ladder rungs need positive compute and finite losses")
    top = int(C.argmax())
    c_top, w = float(C[top]), (1.0 / se**2 if np.all(se > 0) else np.ones_like(L))
    theta = _fit(C, L, w, c_top, float(L[top]))
    if theta is None:
        raise UserError("the ladder's losses do not follow a C^-b + c: check that loss falls with compute")
    fit = power_law(C, *theta, c_top)  # (rungs,)
    noise = np.maximum(np.abs(L - fit), se)  # (rungs,) each rung's misfit, at least its measurement noise
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        Lb = fit + noise * rng.standard_normal(len(L))  # a wild bootstrap of the rungs
        t = _fit(C, Lb, w, c_top, float(Lb[top]))
        if t is not None:
            draws.append(t)
    resid = np.delete(L - fit, top)  # the top rung's residual is 0 by construction
    scatter = float(np.sqrt(np.sum(resid**2) / max(1, len(resid) - 2)))
    return Ladder(list(points), theta, np.array(draws).reshape(-1, 3), c_top, float(model_compute or c_top), scatter)


class ComputeEquivalent(NamedTuple):
    """C_eq of one loss on a ladder. `log10_fraction` is clamped to the ladder (see `where`)."""

    loss: float
    compute: float  # C_eq in FLOPs (clamped to the ladder's range)
    fraction: float  # C_eq / C_model
    log10_fraction: float
    ci: tuple[float, float]  # 95% interval of log10_fraction
    where: str  # "inside", "below" (fraction is an upper bound) or "above" (a lower bound)


WHERE = {-1: "below", 0: "inside", 1: "above"}


def compute_equivalent(loss: float, ladder: Ladder, loss_se: float = 0.0, n_draws: int = 4000,
                       seed: int = 0) -> ComputeEquivalent:
    """The compute at which the ladder's family reaches `loss`, as a fraction of the model's."""
    value, where = ladder.log10_fraction(loss)
    rng = np.random.default_rng(seed + 1)
    thetas = ladder.draws(n_draws, seed)  # (n_draws, 3)
    losses = loss + loss_se * rng.standard_normal(n_draws) + ladder.loss_noise(n_draws, seed)
    reps, _ = ladder.log10_fraction(losses, thetas)
    reps = reps[np.isfinite(reps)]
    ci = (float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))) if reps.size else (math.nan, math.nan)
    lf = float(value)
    return ComputeEquivalent(float(loss), ladder.c_model * 10**lf, 10**lf, lf, ci, WHERE[int(where)])
