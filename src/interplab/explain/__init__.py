"""Explanations of a max-of-k model, checked, costed and compared.

    from interplab.explain import Weights, paths, brute_force, cubic, subcubic, subcubic_rank1
    w = Weights.of(model); p = paths(w)
    exact = brute_force(p)              # accuracy over all vocab^k inputs, FLOPs counted
    proof = cubic(p)                    # certified lower bound, FLOPs, unexplained dimension
    est = independence(p)               # presumption-of-independence estimate (not certified)

Certified bounds: `brute`, `cubic`, `subcubic` (exact EQKE and rank-1 EQKE); heuristic estimates:
`heuristic`; surprise ledgers (bits of an explanation plus bits of the behaviour given it):
`surprise`. Everything reads the model through the path tables of `paths`.
"""

from interplab.explain.brute import BruteForce, brute_force, class_sizes
from interplab.explain.cubic import cubic
from interplab.explain.flops import Flops
from interplab.explain.heuristic import Estimate, independence, sampling
from interplab.explain.paths import Paths, Weights, path_logits, paths
from interplab.explain.proof import Proof
from interplab.explain.subcubic import subcubic, subcubic_rank1

__all__ = [
    "BruteForce", "Estimate", "Flops", "Paths", "Proof", "Weights", "brute_force", "class_sizes", "cubic",
    "independence", "path_logits", "paths", "sampling", "subcubic", "subcubic_rank1",
]
