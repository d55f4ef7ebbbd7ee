"""What a loss curve costs next to one plain evaluation pass over the same tokens (target: at most 3x).

    python bench/loss_curve_cost.py                      # SmolLM2 resid_post.15, 16 values of n
    python bench/loss_curve_cost.py --site resid_post.20 --windows 16 --threads 2

One SmolLM2 site, one decomposition (PCA fitted on harvested training rows, not timed), the same
held-out scoring windows for every row of the table:

- plain: `interplab.metrics.loss_recovered` of the decomposition (clean, zero-ablated, mean-ablated
  and spliced runs: the loss part of the yardstick's evaluation pass);
- forward: the clean model's loss alone (one forward pass);
- curve: `interplab.metrics.loss_curve` with 16 values of n and no single-feature splices: the
  ranking split (2 windows, gradients at the clean and mean-ablated activation) plus the scoring
  pass, in which every splice shares the clean forward up to the site and runs batched after it;
- curve scoring only: the same without the ranking;
- naive: the same 19 scored runs (mean, zero, full reconstruction, 16 values of n) as separate full
  forward passes, one per splice: what the batching saves.

Prints wall and CPU seconds and their ratios to `plain`, with the load average beside them (on a
shared machine, read the CPU column of a one-thread run).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from interplab import ui
from interplab.decompose import create
from interplab.metrics import loss_curves, loss_recovered
from interplab.metrics.downstream import _run
from interplab.metrics.feature_basis import as_basis
from interplab.metrics.loss_curve import Splits, curve_variants, rank_features
from interplab.metrics.splice_batch import BatchSplicer
from interplab.store import harvest_rows
from interplab.subjects import load_subject


def timed(fn, repeat: int) -> tuple[float, float]:
    """Best wall and best CPU seconds over `repeat` calls. On one thread the CPU time is the cost even
    on a machine shared with other jobs (the wall time is stretched by them)."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="resid_post.15")
    ap.add_argument("--windows", type=int, default=8, help="scoring windows (2 per batch)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ui.set_quiet(True)
    lm = load_subject("smollm2", seq_len=args.seq_len)
    rows = harvest_rows(lm, [args.site], 4096, 0, 16, cached=True)[args.site]
    pca = create("pca").fit(rows)
    mean = rows.double().mean(0)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    score = [lm.sample(2, gen(1000 + b), split="test") for b in range(args.windows // 2)]
    splits = Splits([lm.sample(2, gen(7))], score, {})
    points = 16
    while len(ns := np.unique(np.round(np.geomspace(1, pca.n_components_, points)).astype(int)).tolist()) < 16:
        points += 1  # 16 distinct values from 1 to the width, spaced geometrically

    def plain() -> None:
        loss_recovered(pca, lm, args.site, score, mean=mean, n_boot=0)

    def forward() -> None:
        with torch.no_grad():
            for x in score:
                lm.loss(x)

    def curve() -> None:
        loss_curves({"pca": pca}, lm, args.site, ns, splits=splits, singles=0, mean=mean)

    basis, sp = as_basis(pca), BatchSplicer(lm, args.site)
    ranks, mu = rank_features({"pca": basis}, sp, splits.rank)

    def scoring() -> None:
        for x in score:
            sp.losses(x, lambda r, x=x: torch.cat([torch.stack([mu.expand_as(r), torch.zeros_like(r)]),
                                                    curve_variants(basis, ranks["pca"], mu, ns, [], r, x)]), 19)

    def naive() -> None:
        for x in score:
            r = sp.rows(x)
            for v in torch.cat([torch.stack([mu.expand_as(r), torch.zeros_like(r)]),
                                curve_variants(basis, ranks["pca"], mu, ns, [], r, x)]):
                _run(lm, args.site, x, lambda _a, v=v: v, None)

    times = {name: timed(fn, args.repeat) for name, fn in
             [("plain", plain), ("forward", forward), ("curve", curve), ("curve scoring only", scoring),
              ("naive", naive)]}
    tokens = args.windows * args.seq_len
    print(f"SmolLM2 {args.site}, PCA ({pca.n_components_} components), {len(ns)} values of n {ns}, "
          f"{tokens} scoring tokens, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':20s} {'wall':>8s}     {'':11s} {'CPU':>8s}")
    for name, (t, c) in times.items():
        print(f"  {name:20s} {t:8.2f} s {t / times['plain'][0]:5.2f} x plain {c:8.2f} s {c / times['plain'][1]:5.2f} x plain")


if __name__ == "__main__":
    main()
