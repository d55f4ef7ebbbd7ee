"""Choose the importance samplers' settings on distributions that are never scored (issue 10, finding 8).

ITGIS: score (target logit, as published, or its log-probability), gradient average (decayed 0.9,
as published, or running mean) and temperature T; MHIS: temperature T. Each setting runs on every
target with p x budget < 1 of the tuning distributions (`interplab.lpe.TUNING`: "lower" and
"tune_mix", which the `lpe` experiment refuses to score) on the 1-, 2- and 4-layer chartf models,
with exact truth; the objective is the mean squared log10 error (zeros raised to 1e-12), pooled over
models, targets and seeds. One setting for all depths, so planted controls run with it too.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lpe_tune.py [--budget 4096] [--seeds 2] [--positions 4]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np

from interplab import ui
from interplab.lpe import TUNING, Problem, methods
from interplab.runtime import single_thread
from interplab.subjects.chartf import VOCAB
from lpe_common import below_floor

ITGIS_GRID = {"score": ["logit", "logprob"], "decay": [0.9, 1.0], "T": [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]}
MHIS_T = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


def problems(layers: list[int], positions: int, budget: int) -> list[tuple[str, Problem, float]]:
    out = []
    for n_layers, name, model, dists, probs, targets in below_floor(layers, list(TUNING), positions, 0.999 / budget):
        for t in targets:
            out.append((f"{n_layers}L/{name}/{VOCAB[t]!r}", Problem(model, dists, t, name), float(probs[t])))
    return out


def score(ests: list[float], truth: float) -> tuple[float, int]:
    """(mean squared log10 error with zeros at 1e-12, number of estimates within a factor 2)."""
    lse = [(math.log10(max(e, 1e-12)) - math.log10(truth)) ** 2 for e in ests]
    return float(np.mean(lse)), sum(truth / 2 < e < 2 * truth for e in ests)


def sweep(cases: list, budget: int, seeds: int) -> list[tuple]:
    rows = []
    settings = [("itgis", dict(zip(ITGIS_GRID, v))) for v in itertools.product(*ITGIS_GRID.values())]
    settings += [("mhis", {"T": T}) for T in MHIS_T]
    for method, s in settings:
        t0, per_model, close, n = time.perf_counter(), {}, 0, 0
        for name, problem, truth in cases:
            ests = []
            for seed in range(seeds):
                if method == "itgis":
                    tr = methods.itgis_trace(problem, budget, seed, s["T"], score=s["score"], decay=s["decay"])
                else:
                    tr = methods.mhis_trace(problem, budget, seed, s["T"])
                ests.append(tr.at(budget)[0])
            lse, c = score(ests, truth)
            per_model.setdefault(name.split("/")[0], []).append(lse)
            close, n = close + c, n + seeds
        pooled = float(np.mean([v for vs in per_model.values() for v in vs]))
        rows.append((method, s, pooled, {k: float(np.mean(v)) for k, v in per_model.items()}, close, n))
        print(f"{method:5s} {str(s):45s} log-SE {pooled:6.2f}  " + "  ".join(
            f"{k} {v:5.2f}" for k, v in rows[-1][3].items()) + f"  within x2: {close}/{n}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


@single_thread()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=4096)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--positions", type=int, default=4)
    ap.add_argument("--layers", default="1,2,4")
    args = ap.parse_args()
    ui.set_quiet(True)
    cases = problems([int(x) for x in args.layers.split(",")], args.positions, args.budget)
    print(f"{len(cases)} tuning targets (p x {args.budget} < 1): " + ", ".join(f"{n} {p:.0e}" for n, p, in
                                                                             [(c[0], c[2]) for c in cases]))
    rows = sweep(cases, args.budget, args.seeds)
    for method in ("itgis", "mhis"):
        best = min((r for r in rows if r[0] == method), key=lambda r: r[2])
        print(f"best {method}: {best[1]} (pooled log-SE {best[2]:.2f})")


if __name__ == "__main__":
    main()
