"""Why importance sampling finds rare outputs or not: per-batch diagnostics of ITGIS and MHIS (issue 11).

On the tuning distributions (never scored) of the 1-, 2- and 4-layer chartf models, for every target
with p x budget < 1, it records per ITGIS batch: the proposal's effective sample size (ESS of the
weights p/q, as a fraction of the batch), the fraction of proposed inputs whose argmax is the target
and the exact hit probability P_q(E) = sum_E q(x), the exact relative variance of one importance
sample (sum_E p^2/q / P^2 - 1, by enumerating the event's inputs), the proposal's KL(q || p) and the
range of the tilt (scores / T summed over positions) against ln(1/P), the log-likelihood ratio a
proposal must supply to put the event at odds 1, and the cosine between the tilt and the tilt of the
best product proposal (does the gradient point the right way?). The same relative variance for the best product
proposal (the event's own per-position marginals) says whether the product family is the limit.
For MHIS: acceptance rate, fraction of chains in the event, spread of s / T over chains and the ESS
of the self-normalised weights exp(-s / T).

    OMP_NUM_THREADS=1 .venv/bin/python bench/lpe_diagnose.py [--layers 1,2,4] [--score logit] [--T 1.0,0.1] [--verbose]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from interplab import ui
from interplab.lpe import Problem, methods
from interplab.lpe.groundtruth import event_inputs
from interplab.runtime import single_thread
from interplab.subjects.chartf import VOCAB
from lpe_common import add_case_args, below_floor

SHOW = (0, 1, 2, 5, 10, 20)


def exact_hits(ev: tuple[torch.Tensor, torch.Tensor], logq: torch.Tensor) -> tuple[float, float]:
    """(P_q(E), relative variance of one importance sample) for a product proposal logq (L, V)."""
    ids, lp = ev
    if len(ids) == 0:
        return 0.0, math.inf
    lq = logq[torch.arange(ids.shape[1]), ids].sum(-1)  # (k,)
    P = lp.exp().sum()
    return float(lq.exp().sum()), float(torch.exp(2 * lp - lq).sum() / P**2 - 1)


def oracle(ev: tuple[torch.Tensor, torch.Tensor], L: int, V: int) -> torch.Tensor:
    """The best product proposal in the KL sense: log of the per-position marginals of p given E (L, V)."""
    ids, lp = ev
    w = (lp - lp.max()).exp()
    m = torch.zeros(L, V, dtype=torch.float64)
    for i in range(L):
        m[i].index_add_(0, ids[:, i], w / w.sum())
    return m.clamp_min(1e-300).log()


def alignment(tilt: torch.Tensor, target_tilt: torch.Tensor, sup: torch.Tensor) -> float:
    """Cosine between the proposal's tilt and the tilt log(oracle / p) that the best product proposal
    applies (both centred per position over the support; the oracle's zeros clipped at -10)."""
    a, b = [], []
    for row, want, s in zip(tilt, target_tilt.clamp_min(-10.0), sup):
        a.append(row[s] - row[s].mean())
        b.append(want[s] - want[s].mean())
    a, b = torch.cat(a), torch.cat(b)
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def itgis_rows(problem: Problem, ev, truth: float, budget: int, T: float, score: str,
               want: torch.Tensor) -> list[dict]:
    rows: list[dict] = []
    sup = problem.dists > 0

    def probe(st: dict) -> None:
        w = st["logw"].exp()
        q = st["logq"].exp()
        kl = float(torch.where(sup, q * (st["logq"] - st["logp"]), torch.zeros_like(q)).sum())
        tilt = st["tilt"].masked_fill(~sup, float("nan"))
        span = float(sum(np.nanmax(r) - np.nanmin(r) for r in tilt.numpy()))
        pq, rv = exact_hits(ev, st["logq"])
        rows.append({"batch": st["batch"], "ess": float(w.sum() ** 2 / (w**2).sum()) / len(w),
                     "hit": float(st["hit"].double().mean()), "p_q": pq, "relvar": rv, "kl": kl, "span": span,
                     "ln1p": -math.log(truth), "estimate": st["estimate"] / truth,
                     "align": alignment(st["tilt"], want, sup)})

    methods.itgis_trace(problem, budget, 0, T, score=score, probe=probe)
    return rows


def mhis_rows(problem: Problem, truth: float, budget: int, T: float) -> list[dict]:
    rows: list[dict] = []

    def probe(st: dict) -> None:
        s = st["score"] / T
        w = torch.exp(-(s - s.max()))
        rows.append({"step": st["step"], "accept": float(st["accept"].double().mean()),
                     "hit": float(st["hit"].double().mean()), "spread": float(s.max() - s.min()),
                     "ess": float(w.sum() ** 2 / (w**2).sum()) / len(w), "ln1p": -math.log(truth)})

    est = methods.mhis_trace(problem, budget, 0, T, probe=probe).at(budget)[0]
    rows.append({"estimate": est / truth})
    return rows


def target_diagnosis(problem: Problem, ev, P: float, budget: int, T: float, score: str, T_mhis: float,
                     verbose: bool) -> dict:
    """ITGIS's per-batch rows and MHIS's summary for one target (printed when `verbose`)."""
    d = problem.dists
    best = oracle(ev, d.shape[0], d.shape[1])
    o_pq, o_rv = exact_hits(ev, best)
    rows = itgis_rows(problem, ev, P, budget, T, score, best - d.log())
    m = mhis_rows(problem, P, budget, T_mhis)
    mhis_est = m.pop()["estimate"]
    half = m[len(m) // 2:]
    mhis = {k: float(np.mean([r[k] for r in half])) for k in ("accept", "hit", "spread", "ess")}
    if verbose:
        print(f"\n{VOCAB[problem.target]!r}: P = {P:.2e}, ln 1/P = {-math.log(P):.1f}; {len(ev[0])} event inputs; best "
              f"product proposal: P_q(E) = {o_pq:.2f}, relative variance {o_rv:.3g}")
        print("  ITGIS batch  ESS   hits  P_q(E)    rel.var   KL(q|p) tilt-span  ln1/P  align  est/P")
        for r in rows:
            if r["batch"] in SHOW or r is rows[-1]:
                print(f"  {r['batch']:10d} {r['ess']:5.2f} {r['hit']:5.2f} {r['p_q']:8.1e} {r['relvar']:10.3g} "
                      f"{r['kl']:8.2f} {r['span']:9.2f} {r['ln1p']:6.1f} {r['align']:6.2f} {r['estimate']:6.2f}")
        print(f"  MHIS (T={T_mhis}) second half: accept {mhis['accept']:.2f}, chains in event {mhis['hit']:.2f}, "
              f"s/T spread {mhis['spread']:.1f}, weight ESS {mhis['ess']:.2f}; estimate/P {mhis_est:.2f}")
    return {"P": P, "oracle_pq": o_pq, "oracle_rv": o_rv, "rows": rows, "mhis": mhis, "mhis_est": mhis_est}


def summarise(name: str, diags: list[dict]) -> None:
    """Medians over targets: ITGIS's last batch (and batch 1), the best product proposal, MHIS."""
    def med(vals: list[float]) -> float:
        return float(np.median(vals))

    last = [d["rows"][-1] for d in diags]
    found = sum(0.5 < r["estimate"] < 2 for r in last)
    print(f"{name:28s} {len(diags):3d} targets | ITGIS last batch: ESS {med([r['ess'] for r in last]):4.2f}, "
          f"hits {med([r['hit'] for r in last]):4.2f}, P_q(E)/P {med([r['p_q'] / d['P'] for r, d in zip(last, diags)]):8.2g}, "
          f"rel.var {med([r['relvar'] for r in last]):8.2g}, KL/ln(1/P) {med([r['kl'] / r['ln1p'] for r in last]):4.2f}, "
          f"tilt span/ln(1/P) {med([r['span'] / r['ln1p'] for r in last]):4.2f}, align {med([r['align'] for r in last]):+.2f}; "
          f"within x2 {found}/{len(diags)} | best product q: P_q(E) {med([d['oracle_pq'] for d in diags]):4.2f}, "
          f"rel.var {med([d['oracle_rv'] for d in diags]):6.2g} | MHIS: accept {med([d['mhis']['accept'] for d in diags]):4.2f}, "
          f"in event {med([d['mhis']['hit'] for d in diags]):4.2f}, s/T spread/ln(1/P) "
          f"{med([d['mhis']['spread'] / -math.log(d['P']) for d in diags]):4.2f}, weight ESS "
          f"{med([d['mhis']['ess'] for d in diags]):4.2f}, within x2 {sum(0.5 < d['mhis_est'] < 2 for d in diags)}/{len(diags)}")


def report(layers: list[int], dists: list[str], positions: int, budget: int, Ts: list[float], score: str,
           T_mhis: float, verbose: bool) -> None:
    for n_layers in layers:
        cases = []
        for _, dname, model, d, probs, targets in below_floor([n_layers], dists, positions, 1.0 / budget):
            evs = event_inputs(model, d, targets)
            cases += [(Problem(model, d, t, dname), evs[t], float(probs[t])) for t in targets]
        for T in Ts:
            diags = [target_diagnosis(p, ev, P, budget, T, score, T_mhis, verbose) for p, ev, P in cases]
            summarise(f"{n_layers}L ITGIS T={T} ({score})", diags)


@single_thread()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_case_args(ap)
    ap.add_argument("--T", default="1.0", help="ITGIS temperatures, comma-separated")
    ap.add_argument("--score", default="logit", choices=["logit", "logprob"])
    ap.add_argument("--T-mhis", type=float, default=0.5)
    ap.add_argument("--verbose", action="store_true", help="every target's per-batch table")
    args = ap.parse_args()
    ui.set_quiet(True)
    report([int(x) for x in args.layers.split(",")], args.dists.split(","), args.positions, args.budget,
           [float(x) for x in args.T.split(",")], args.score, args.T_mhis, args.verbose)


if __name__ == "__main__":
    main()
