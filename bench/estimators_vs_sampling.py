"""Propagation estimators against Monte Carlo at equal FLOPs on random He-initialised ReLU MLPs.

For width 256 and 4, 8 and 16 hidden layers (no biases, x ~ N(0, I)): the variance-normalised MSE
of the final-layer mean for every propagation estimator (`mean`, `cov`, `cumulant`, Mehler orders
1 and 4), and for Monte Carlo run with as many samples as the best estimator's FLOPs buy
(measured over `--mc-repeats` runs, next to its expectation 1/N). Prints the ratio
MC nmse / best estimator nmse (target at depth 4: >= 10x). Ground truth from 2^22 samples
(2^18 with --quick), its sampling error subtracted. FLOPs are counted from operations, not timed.

    .venv/bin/python bench/estimators_vs_sampling.py [--quick] [--width 256] [--depths 4 8 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from interplab.estimate import Gaussian, estimate_mean, ops_of, run_samples
from interplab.experiments.estimators import methods, mlp_network


def nmse(est: np.ndarray, truth: np.ndarray, var: np.ndarray, n_truth: int) -> float:
    return float((np.sum((est - truth) ** 2) - np.sum(var) / n_truth) / np.sum(var))


def one_depth(width: int, depth: int, truth_log2: int, mc_repeats: int, seed: int) -> dict:
    net = mlp_network(width, depth, seed)
    ops = ops_of(net)
    last = ops[-1].name
    t = time.perf_counter()
    gt = run_samples(ops, Gaussian.standard(width, full=False), 1 << truth_log2, seed=10_000 + seed, sites=[last])
    truth, var = gt.means[last].numpy(), gt.variances[last].numpy()
    per_sample = gt.flops / gt.n
    print(f"  ground truth: 2^{truth_log2} samples in {time.perf_counter() - t:.0f} s")
    rows = {}
    g = Gaussian.standard(width)
    for key, (name, opts) in methods(4).items():
        t = time.perf_counter()
        est = estimate_mean(net, g, name, **opts)
        rows[key] = (nmse(est.means[last].numpy(), truth, var, gt.n), est.flops, time.perf_counter() - t)
    floor = np.sqrt(2.0 / width) / gt.n
    best = min(rows, key=lambda k: max(rows[k][0], floor) * max(rows[k][1] / per_sample, 1.0))
    n_eq = max(int(rows[best][1] // per_sample), 1)
    mc = []
    for r in range(mc_repeats):
        st = run_samples(ops, g, n_eq, seed=seed * 1000 + r, sites=[last])
        mc.append(nmse(st.means[last].numpy(), truth, var, gt.n))
    return {"rows": rows, "best": best, "n_eq": n_eq, "mc": float(np.mean(mc)), "mc_sd": float(np.std(mc)),
            "floor": float(floor), "per_sample": per_sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="ground truth from 2^18 samples instead of 2^22")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--mc-repeats", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: timings are noisy)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    truth_log2 = 18 if args.quick else 22
    for depth in args.depths:
        print(f"width {args.width}, {depth} hidden layers")
        res = one_depth(args.width, depth, truth_log2, args.mc_repeats, args.seed)
        for key, (e, f, secs) in res["rows"].items():
            n = max(f / res["per_sample"], 1.0)
            print(f"  {key:13s} nmse {e:10.3e}  FLOPs {f:9.3e}  ({n:8.1f} samples' worth, {secs:.2f} s)  "
                  f"MC 1/N over this: {1 / n / max(e, res['floor']):8.1f}x")
        best_nmse = max(res["rows"][res["best"]][0], res["floor"])
        print(f"  Monte Carlo at equal FLOPs: {res['n_eq']} samples, nmse {res['mc']:.3e} +- {res['mc_sd']:.1e} "
              f"(expected 1/N = {1 / res['n_eq']:.3e})")
        print(f"  ratio MC nmse / {res['best']} nmse = {res['mc'] / best_nmse:.1f}x "
              f"(against 1/N: {1 / res['n_eq'] / best_nmse:.1f}x; target at depth 4: >= 10x)")


if __name__ == "__main__":
    main()
