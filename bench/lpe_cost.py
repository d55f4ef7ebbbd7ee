"""Throughput of every low-probability estimator on the 2-layer chartf model, and one exact ground truth.

For each method: forward-pass equivalents (FPE, a backward pass counts two) it spends per second of
wall time, against the baseline of plain batched forward passes of the same inputs (what `naive`
spends its budget on), and the ratio. Then the wall time of one exact ground truth by enumeration
(uncached). Single-threaded; on a shared machine the timings are noisy (medians of --reps runs).

    .venv/bin/python bench/lpe_cost.py [--quick] [--budget 4096] [--reps 3] [--dist lower] [--positions 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from interplab import ui
from interplab.lpe import (
    METHODS,
    Problem,
    distribution,
    estimate,
    event_probs,
    pick_targets,
)
from interplab.lpe.groundtruth import enumerate_event_probs, last_logits
from interplab.runtime import single_thread
from interplab.subjects.chartf import VOCAB, CharTFConfig, train_chartf


def plain_forward_rate(problem: Problem, n: int, reps: int) -> float:
    """Forward passes per second of n sampled inputs in batches of 4096 (the baseline)."""
    rates = []
    for r in range(reps):
        ids = problem.sample(n, torch.Generator().manual_seed(r))  # (n, L)
        t = time.perf_counter()
        for start in range(0, n, 4096):
            last_logits(problem.model, ids[start : start + 4096])
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def method_rate(problem: Problem, method: str, budget: int, reps: int) -> tuple[float, float]:
    """(median FPE per second, FPE spent per run)."""
    rates, cost = [], 0.0
    for r in range(reps):
        t = time.perf_counter()
        est = estimate(problem, method, budget, seed=r)
        rates.append(est.cost / (time.perf_counter() - t))
        cost = est.cost
    return statistics.median(rates), cost


@single_thread()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="budget 1024, 1 rep, 4 positions")
    ap.add_argument("--budget", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dist", default="lower")
    ap.add_argument("--positions", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        args.budget, args.reps, args.positions = 1024, 1, 4
    ui.set_quiet(True)
    model = train_chartf(CharTFConfig(n_layers=2))
    dists = distribution(args.dist, args.positions)
    probs = event_probs(model, dists)
    targets = pick_targets(probs) or [int(probs.argmin())]
    problem = Problem(model, dists, targets[len(targets) // 2], args.dist)
    print(f"torch {torch.__version__}, 1 thread; 2-layer chartf, '{args.dist}' over {args.positions} positions, "
          f"target {VOCAB[problem.target]!r} (p = {probs[problem.target]:.2e}), budget {args.budget}")
    base = plain_forward_rate(problem, max(args.budget, 4096), args.reps)
    print(f"{'baseline: batched forward':28s} {base:12.0f} FPE/s")
    for method in METHODS.names():
        rate, cost = method_rate(problem, method, args.budget, args.reps)
        print(f"{method:28s} {rate:12.0f} FPE/s   ratio to baseline {rate / base:6.3f}   (spent {cost:.0f} FPE)")
    t = time.perf_counter()
    enumerate_event_probs(model, dists)
    seconds = time.perf_counter() - t
    print(f"exact ground truth: {problem.n_inputs} inputs in {seconds:.1f} s "
          f"({problem.n_inputs / seconds:.0f} inputs/s, ratio to baseline {problem.n_inputs / seconds / base:.2f})")


if __name__ == "__main__":
    main()
