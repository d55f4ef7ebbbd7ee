"""Heuristic estimators: a Gaussian state pushed through a network layer by layer, against sampling.

    from interplab.estimate import Gaussian, estimate_mean, rules
    est = estimate_mean(model, Gaussian.standard(64), "cov")      # est.means[site], est.flops
    state = rules.relu(rules.linear(Gaussian.standard(8), W))     # the per-layer rules, public

Rules for transformer parts (embedding inputs, first-order attention, softmax read-out) live in
`interplab.estimate.attention`; independence in a chosen basis in `interplab.estimate.basis`.
"""

from interplab.estimate import rules
from interplab.estimate.attention import attention, embedding, softmax_mean
from interplab.estimate.gaussian import Gaussian
from interplab.estimate.layers import Heaviside, Op, ops_of
from interplab.estimate.montecarlo import SampleStats, run_samples
from interplab.estimate.propagate import ESTIMATORS, Estimate, estimate_mean, propagate

__all__ = [
    "ESTIMATORS", "Estimate", "Gaussian", "Heaviside", "Op", "SampleStats", "attention", "embedding",
    "estimate_mean", "ops_of", "propagate", "rules", "run_samples", "softmax_mean",
]
