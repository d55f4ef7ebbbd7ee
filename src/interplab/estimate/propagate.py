"""Estimators of the mean at every layer of a network, each charged in FLOPs, and their registry.

    est = estimate_mean(model, Gaussian.standard(64), "cov", order=2)
    est.means["out"], est.flops

Estimators (ESTIMATORS):
- `montecarlo` (n_samples, seed): sample means; unbiased, error ~ 1/N in variance-normalised MSE.
- `mean`: every unit independent with a Gaussian marginal (diagonal covariance).
- `cov`: Gaussian closure with the full covariance; Mehler terms up to `order` through
  nonlinearities (the arc-cosine kernel for zero-mean ReLU pre-activations).
- `cumulant`: like `cov` (or like `mean` with full=False) but carrying third and fourth marginal
  cumulants and correcting every nonlinearity with the Edgeworth series.
Inputs are a `Gaussian` or a tensor of samples (n, ..., d); a propagation estimator moment-matches
the samples first (the fit's FLOPs are charged).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from interplab.errors import UserError
from interplab.estimate import rules
from interplab.estimate.gaussian import Gaussian
from interplab.estimate.layers import Op, ops_of
from interplab.estimate.montecarlo import run_samples
from interplab.registry import Registry


@dataclass
class Estimate:
    """Estimated means at every reported site (keyed by site name), the FLOPs spent, and extras."""

    means: dict[str, torch.Tensor]
    flops: float
    method: str
    variances: dict[str, torch.Tensor] = field(default_factory=dict)  # per-unit variance estimates
    states: dict[str, Gaussian] = field(default_factory=dict)  # propagation methods only
    n_samples: int | None = None  # montecarlo only


def propagate(ops: list[Op] | object, state: Gaussian, order: int = 1, arccos: bool = True) -> dict[str, Gaussian]:
    """The state after every op (keyed by op/site name); the last state's `flops` is the total."""
    ops = ops if isinstance(ops, list) else ops_of(ops)
    out: dict[str, Gaussian] = {}
    for op in ops:
        if op.kind == "linear":
            assert op.W is not None
            state = rules.linear(state, op.W, op.b)
        elif op.kind == "act":
            state = rules.elementwise(state, op.fn, order=order, arccos=arccos)
        out[op.name] = state
    return out


def _input_state(inputs: Gaussian | torch.Tensor, full: bool, cumulants: bool) -> Gaussian:
    if isinstance(inputs, torch.Tensor):
        return Gaussian.fit(inputs, full=full, cumulants=cumulants)
    state = inputs.mean.double()
    g = dataclasses.replace(inputs, mean=state,
                            cov=inputs.cov.double() if inputs.cov is not None else None,
                            var=inputs.var.double() if inputs.var is not None else None)
    if not full and g.full:
        g = g.diagonal()
    if full and not g.full:
        g = dataclasses.replace(g, cov=torch.diag_embed(g.variance), var=None)
    return g.with_cumulants() if cumulants else dataclasses.replace(g, k3=None, k4=None)


def _from_states(states: dict[str, Gaussian], method: str) -> Estimate:
    last = next(reversed(states.values()))
    return Estimate({k: s.mean for k, s in states.items()}, last.flops, method,
                    {k: s.variance for k, s in states.items()}, states)


def mean_estimator(ops: list[Op], inputs: Gaussian | torch.Tensor) -> Estimate:
    """Independent units, Gaussian marginals (diagonal covariance)."""
    return _from_states(propagate(ops, _input_state(inputs, full=False, cumulants=False)), "mean")


def cov_estimator(ops: list[Op], inputs: Gaussian | torch.Tensor, order: int = 1, arccos: bool = True) -> Estimate:
    """Gaussian closure with the full covariance, Mehler series up to `order`."""
    state = _input_state(inputs, full=True, cumulants=False)
    return _from_states(propagate(ops, state, order=order, arccos=arccos), "cov")


def cumulant_estimator(ops: list[Op], inputs: Gaussian | torch.Tensor, order: int = 1, full: bool = True,
                       arccos: bool = True) -> Estimate:
    """Marginal third and fourth cumulants on top of `cov` (full=True) or `mean` (full=False)."""
    state = _input_state(inputs, full=full, cumulants=True)
    return _from_states(propagate(ops, state, order=order, arccos=arccos), "cumulant")


def montecarlo_estimator(ops: list[Op], inputs: Gaussian | torch.Tensor, n_samples: int = 1024, seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> Estimate:
    """Sample means from `n_samples` draws (or the first n rows of a sample tensor)."""
    if n_samples < 1:
        raise UserError(f"n_samples must be at least 1, got {n_samples}")
    st = run_samples(ops, inputs, n_samples, seed=seed, dtype=dtype)
    return Estimate(st.means, st.flops, "montecarlo", st.variances, n_samples=st.n)


ESTIMATORS: Registry[Callable[..., Estimate]] = Registry("estimator")
ESTIMATORS.add("montecarlo", montecarlo_estimator, help="sample means (n_samples, seed)")
ESTIMATORS.add("mean", mean_estimator, help="independent Gaussian units (diagonal covariance)")
ESTIMATORS.add("cov", cov_estimator, help="Gaussian closure, full covariance, Mehler terms up to `order`")
ESTIMATORS.add("cumulant", cumulant_estimator, help="covariance plus Edgeworth corrections from k3, k4")


def estimate_mean(model: object, inputs: Gaussian | torch.Tensor, method: str = "cov", **options) -> Estimate:
    """Estimate the mean at every layer output of `model` for `inputs`, with the FLOPs spent.

    model: an nn.Sequential of Linear / ReLU / GELU / SiLU / Tanh / Sigmoid / Heaviside / Identity,
    the `mlp` or `tms` Subject, or a TMSModel. inputs: a Gaussian or samples (n, ..., d).
    method: a name in ESTIMATORS; options go to it (n_samples, seed, order, full, arccos).
    """
    fn = ESTIMATORS.get(method)
    ops = ops_of(model)
    allowed = list(inspect.signature(fn).parameters)[2:]
    bad = [k for k in options if k not in allowed]
    if bad:
        raise UserError(f"estimator '{method}' has no option '{bad[0]}'; its options: {', '.join(allowed)}")
    return fn(ops, inputs, **options)
