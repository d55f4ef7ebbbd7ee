"""Where Gaussian propagation breaks on rare outputs: per layer, the predicted logit difference against
the exact one (issue 11, item 3).

For every target with p x budget < 1 of the tuning distributions (never scored), on the 1-, 2- and
4-layer chartf models: at the embedding and after every block, the residual stream's last position is
read through the final LayerNorm and the unembedding (a logit lens), and the logit difference
m = logit_t - logit_j (j the competitor whose constraint the final Gaussian finds tightest) is
compared, exactly (every input of the support, weighted by p) and as propagated (Gaussian rules):
its mean and standard deviation, its upper tail P(m > 0), and the tail of a Gaussian with the exact
mean and sd (which isolates the error of the shape, non-Gaussianity, from that of the two moments).
The last line per target is the event itself: exact P(argmax = t) against `propagate`'s estimate.

Then the attempted repair, importance sampling with a proposal chosen by the propagated Gaussian
(unbiased whatever the Gaussian gets wrong): the input distribution's per-position logits are tilted
along the gradient of J = log P_G(E) - KL(q || p), P_G the Gaussian's event probability under the
tilted inputs (product of Phi(z_j) over competitors j), with the step chosen by line search on J;
inputs are then drawn from the tilted product distribution and weighted by p / q. Reported: its
estimate / P over seeds, its cost, and the cosine between its tilt and the tilt of the best product
proposal (bench/lpe_diagnose.py's `alignment`), beside ITGIS at the experiment's settings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lpe_propagate.py [--layers 1,2,4] [--positions 4] [--guided]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from scipy.stats import norm

from interplab import ui
from interplab.lpe import Problem, methods
from interplab.lpe.groundtruth import _chunks, event_inputs, last_logits
from interplab.lpe.propagate import forward_flops, lens, propagate_all, residual_states
from interplab.runtime import single_thread
from interplab.subjects.chartf import VOCAB
from lpe_common import add_case_args, below_floor


@torch.no_grad()
def exact_margins(model, dists: torch.Tensor, t: int, j: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per stage (embedding, each block), m = logit_t - logit_j through the lens at the last position,
    for every input of the support (n,); and the inputs' probabilities (n,)."""
    W, b = model.unembed.weight, model.unembed.bias
    stages: list[list[torch.Tensor]] = [[] for _ in range(len(model.h) + 1)]
    weights = []
    for ids, lp in _chunks(dists, 8192):
        x = model.embed(ids)  # (b, L, d)
        for k in range(len(model.h) + 1):
            if k:
                x = model.h[k - 1](x)
            h = model.ln_f(x[:, -1])  # (b, d)
            stages[k].append((h @ (W[t] - W[j]) + b[t] - b[j]).double())
        weights.append(lp.exp())
    return [torch.cat(s).numpy() for s in stages], torch.cat(weights).numpy()


def gaussian_margin(model, state, t: int, j: int) -> tuple[float, float]:
    """Mean and sd of logit_t - logit_j under the lens of a Gaussian residual state (last position)."""
    g = lens(model, state)
    mu = g.mean[-1]  # (d,)
    S = g.cov[-1] if g.full else torch.diag(g.variance[-1])  # (d, d)
    w = (model.unembed.weight[t] - model.unembed.weight[j]).double()
    return float(w @ mu + model.unembed.bias[t] - model.unembed.bias[j]), float(torch.sqrt(w @ S @ w))


def tightest(model, state, t: int) -> int:
    """The competitor j whose constraint logit_t > logit_j the final Gaussian finds least likely."""
    best, z_best = -1, math.inf
    for j in range(model.vocab_size):
        if j != t:
            mu, sd = gaussian_margin(model, state, t, j)
            if mu / sd < z_best:
                best, z_best = j, mu / sd
    return best


@torch.no_grad()
def report(layers: list[int], dists_names: list[str], positions: int, budget: int) -> None:
    print("stage      | exact mean  sd   | Gauss mean  sd   | exact P(m>0) | Gauss P(m>0) | moment-matched P | "
          "log10 Gauss/exact")
    for n_layers, dname, model, dists, probs, targets in below_floor(layers, dists_names, positions, 1.0 / budget):
        states = residual_states(model, dists, full=True)
        prop, _ = propagate_all(model, dists, targets)
        for t in targets:
            j = tightest(model, states[-1], t)
            ms, w = exact_margins(model, dists, t, j)
            print(f"-- {n_layers}L {dname} target {VOCAB[t]!r} vs {VOCAB[j]!r}: P = {probs[t]:.2e}")
            for k, (m, state) in enumerate(zip(ms, states)):
                em = float(np.sum(w * m))
                esd = float(np.sqrt(np.sum(w * (m - em) ** 2)))
                gm, gsd = gaussian_margin(model, state, t, j)
                ep, gp, mp = float(np.sum(w * (m > 0))), norm.sf(0, gm, gsd), norm.sf(0, em, esd)
                ratio = math.log10(max(gp, 1e-300) / ep) if ep > 0 else math.inf
                name = "embedding" if k == 0 else f"block {k}"
                print(f"{name:10s} | {em:7.2f} {esd:6.2f} | {gm:7.2f} {gsd:6.2f} | {ep:12.2e} | {gp:12.2e} | "
                      f"{mp:16.2e} | {ratio:6.1f}")
            r = math.log10(max(prop[t], 1e-300) / probs[t])
            print(f"{'event':10s} | P(argmax = t) exact {probs[t]:.2e}, propagate {prop[t]:.2e}: log10 ratio {r:.1f}")


def guided_objective(model, logp: torch.Tensor, sup: torch.Tensor, theta: torch.Tensor, t: int, full: bool):
    """(log P_G(E) under q_theta, KL(q_theta || p), FLOPs of the propagation). `logp` is finite off the
    support (a large negative number, so q is exactly 0 there and no gradient is NaN)."""
    logq = torch.log_softmax(logp + theta, -1)  # (L, V)
    q = logq.exp()
    g = lens(model, residual_states(model, q, full)[-1])
    mu = g.mean[-1]  # (d,)
    W, b = model.unembed.weight.detach().double(), model.unembed.bias.detach().double()
    keep = torch.arange(W.shape[0]) != t
    M, c = (W[t] - W)[keep], (b[t] - b)[keep]  # (V-1, d), (V-1,)
    var = (M @ g.cov[-1] * M).sum(-1) if g.full else (M**2) @ g.variance[-1]  # (V-1,)
    log_pg = torch.special.log_ndtr((M @ mu + c) / var.sqrt()).sum()
    kl = torch.where(sup, q * (logq - logp), torch.zeros_like(q)).sum()
    return log_pg, kl, g.flops


def guided_proposal(model, dists: torch.Tensor, t: int, full: bool = False,
                    etas: tuple = (0.5, 1, 2, 4, 8, 16, 32)) -> tuple[torch.Tensor, float]:
    """(log q (L, V) of the tilted inputs, cost in forward-pass equivalents): one gradient of J at the
    untilted inputs (a backward pass counts two), then a line search over steps along it."""
    p = dists.double()
    sup = p > 0
    logp = torch.where(sup, p.log(), torch.full_like(p, -1e4))  # (L, V) finite: exp underflows to 0
    F = forward_flops(model, p.shape[0])
    theta = torch.zeros_like(p, requires_grad=True)
    log_pg, kl, flops = guided_objective(model, logp, sup, theta, t, full)
    (grad,) = torch.autograd.grad(log_pg - kl, theta)
    grad = torch.where(sup, grad, torch.zeros_like(grad))
    grad = grad / grad.abs().max()
    cost, best = 3 * flops / F, (-math.inf, torch.zeros_like(p))
    with torch.no_grad():
        for eta in etas:
            lp_, kl_, flops = guided_objective(model, logp, sup, eta * grad, t, full)
            cost += flops / F
            if float(lp_ - kl_) > best[0]:
                best = (float(lp_ - kl_), eta * grad)
    logq = torch.log_softmax(torch.where(sup, logp + best[1], torch.tensor(-math.inf, dtype=torch.float64)), -1)
    return logq, cost


@torch.no_grad()
def guided_is(problem: Problem, budget: int, seed: int, full: bool = False) -> tuple[float, float, torch.Tensor]:
    """(estimate, cost, log q): unbiased importance sampling from the guided proposal, forward passes only."""
    with torch.enable_grad():
        logq, cost = guided_proposal(problem.model, problem.dists, problem.target, full)
    n = int(budget - math.ceil(cost))
    if n <= 0:
        return 0.0, cost, logq
    ids = torch.multinomial(logq.exp().float(), n, replacement=True, generator=torch.Generator().manual_seed(seed)).T
    logp, pos = problem.dists.double().log(), torch.arange(problem.positions)
    logw = (logp[pos, ids] - logq[pos, ids]).sum(-1)  # (n,)
    hit = last_logits(problem.model, ids).argmax(-1) == problem.target  # (n,)
    return float((logw.exp() * hit).sum() / n), cost, logq


def report_guided(layers: list[int], dists_names: list[str], positions: int, budget: int, seeds: int = 3) -> None:
    from lpe_diagnose import alignment, oracle  # bench/ sibling

    from interplab.experiments.lpe import LPEConfig

    cfg = LPEConfig()
    print(f"\nGuided importance sampling (mean-field Gaussian) vs ITGIS (T={cfg.itgis_temperature}, {cfg.itgis_score}), "
          f"budget {budget}: estimate / P per seed; cosine of the tilt with the best product proposal's")
    for n_layers, dname, model, dists, probs, targets in below_floor(layers, dists_names, positions, 1.0 / budget):
        evs = event_inputs(model, dists, targets)
        for t in targets:
            P, problem = float(probs[t]), Problem(model, dists, t, dname)
            runs = [guided_is(problem, budget, s) for s in range(seeds)]
            want = oracle(evs[t], dists.shape[0], dists.shape[1]) - dists.log()
            cos = alignment(runs[0][2] - dists.log(), want, dists > 0)
            it = [methods.itgis_trace(problem, budget, s, cfg.itgis_temperature, score=cfg.itgis_score,
                                      decay=cfg.itgis_decay).at(budget)[0] / P for s in range(seeds)]
            print(f"{n_layers}L {dname} {VOCAB[t]!r} P={P:.1e}: guided " + " ".join(f"{e / P:.2f}" for e, *_ in runs)
                  + f" (cost {runs[0][1]:.0f} FPE, tilt cosine {cos:+.2f}) | ITGIS " + " ".join(f"{x:.2f}" for x in it))


@single_thread()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_case_args(ap)
    ap.add_argument("--guided", action="store_true", help="also run the Gaussian-guided importance sampler")
    args = ap.parse_args()
    ui.set_quiet(True)
    layers = [int(x) for x in args.layers.split(",")]
    report(layers, args.dists.split(","), args.positions, args.budget)
    if args.guided:
        report_guided(layers, args.dists.split(","), args.positions, args.budget)


if __name__ == "__main__":
    main()
