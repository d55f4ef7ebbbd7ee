"""Low-probability estimation: estimate P[argmax of the last-position logits = target] under x ~ D.

    problem = Problem(model, distribution("lower", 5), target=VOCAB.index("Q"))
    ground_truth(problem)                          # exact, by enumeration (cached)
    estimate(problem, "itgis", budget=4096, seed=0)  # Estimate(probability, cost)

`cost` is in forward-pass equivalents of one input sequence (a backward pass counts as two).
Methods: naive, itgis, mhis (importance sampling), qld, gld (activation extrapolation) and propagate
(Gaussian propagation of D through the network).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from interplab.errors import UserError
from interplab.lpe import extrapolate, methods
from interplab.lpe.groundtruth import event_probs, ground_truth, pick_targets
from interplab.lpe.problem import DISTRIBUTIONS, TUNING, Problem, distribution
from interplab.registry import Registry


class Estimate(NamedTuple):
    """An estimate of the event's probability, in [0, 1], and what it cost in forward-pass equivalents."""

    probability: float
    cost: float


Method = Callable[[Problem, int, int], Estimate]
METHODS: Registry[Method] = Registry("lpe method")


def _extrapolation(fn: Callable) -> Method:
    def run(problem: Problem, budget: int, seed: int) -> Estimate:
        acts, _ = methods.sample_final(problem, budget, seed)  # (budget, d)
        W, b = extrapolate.unembedding(problem.model)
        return Estimate(float(fn(acts.double().numpy(), W, b, problem.target)), float(budget))

    return run


def _naive(problem: Problem, budget: int, seed: int) -> Estimate:
    return Estimate(methods.naive(problem, budget, seed), float(budget))


ITGIS_MIN_BUDGET = 3
"""One sample's forward and backward pass."""
MHIS_MIN_BUDGET = 6
"""One chain's initial state and one step, each a forward and backward pass."""


def _check_budget(method: str, budget: int, minimum: int) -> None:
    if budget < minimum:
        raise UserError(f"{method} needs a budget of at least {minimum} forward-pass equivalents for one step "
                        f"(a forward plus backward pass counts 3), got {budget}")


def _itgis(problem: Problem, budget: int, seed: int) -> Estimate:
    _check_budget("itgis", budget, ITGIS_MIN_BUDGET)
    return Estimate(*methods.itgis_trace(problem, budget, seed).at(budget))


def _mhis(problem: Problem, budget: int, seed: int) -> Estimate:
    _check_budget("mhis", budget, MHIS_MIN_BUDGET)
    return Estimate(*methods.mhis_trace(problem, budget, seed).at(budget))


def _propagate(problem: Problem, budget: int, seed: int) -> Estimate:
    """Full per-position covariances when they fit the budget, else the mean-field (diagonal) variant.

    The cost is a function of the shapes only, so checking it after the run equals checking before.
    """
    from interplab.lpe.propagate import propagate_estimate

    for full in (True, False):
        p, cost = propagate_estimate(problem, full=full, seed=seed)
        if cost <= budget:
            return Estimate(p, cost)
    raise UserError(f"propagate needs {cost:.0f} forward-pass equivalents even in mean field, more than the "
                    f"budget of {budget}; give it a larger budget")


METHODS.add("naive", _naive, "fraction of `budget` samples whose argmax is the target")
METHODS.add("itgis", _itgis, "independent token gradient importance sampling")
METHODS.add("mhis", _mhis, "Metropolis-Hastings importance sampling")
METHODS.add("qld", _extrapolation(extrapolate.qld_from_acts), "quadratic logit decomposition")
METHODS.add("gld", _extrapolation(extrapolate.gld_from_acts), "Gaussian logit difference (raw tail)")
METHODS.add("propagate", _propagate, "Gaussian propagation of D to the logits (budget-free)")


def estimate(problem: Problem, method: str, budget: int, seed: int = 0) -> Estimate:
    """Run `method` on `problem` with at most `budget` forward-pass equivalents."""
    if budget < 1:
        raise UserError(f"budget must be at least 1 forward pass, got {budget}")
    return METHODS.get(method)(problem, int(budget), int(seed))


__all__ = [
    "DISTRIBUTIONS",
    "TUNING",
    "METHODS",
    "Estimate",
    "Problem",
    "distribution",
    "estimate",
    "event_probs",
    "ground_truth",
    "pick_targets",
]
