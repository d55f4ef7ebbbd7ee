"""How long the default-scale `decompose` study's SAE training takes on this machine, from the
trainer's own pre-run estimate (`interplab.decompose.timing.RunEstimate`: one warm-up step, then 3
timed steps) of every SAE variant at the study's sizes, with the process's CPU seconds over the same
steps beside the wall clock (on a shared machine the CPU seconds are what a quiet core would take).

Sizes: width 8 x d_in for d_in 64 (the toys: synthetic and TMS hidden), 576 (SmolLM2 resid_post.15)
and 1536 (mlp_hidden.15); k 32; batch 4096; 1000 steps (the study's defaults). The rows are synthetic
heavy-tailed (16384, d), not the study's activations: the first steps of ReLU and JumpReLU, which
start dense and sparsen as they train, cost more than their average step.

Count of fits (DecomposeConfig defaults): per (study, k) every SAE variant once and the chosen one
refitted 4 more times; (study, k) pairs: d 64: synthetic + TMS at k 8 and 32, and their controls
(sparse, gaussian, rotation; one spec, cached) at both ks = 10; each LM site: itself at both ks and
its controls (sparse, gaussian) at both = 6. The refitted variant is chosen by the run, so the total
is a range (cheapest .. dearest variant refitted). Linear methods, ICA, the LM harvest and the
evaluation are left out (minutes, against hours).

    .venv/bin/python bench/sae_decompose_estimate.py [--threads 1] [--sizes 64,576,1536]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from interplab import ui
from interplab.decompose import create, timing
from interplab.decompose.train import train_sae

VARIANTS = ("sae-topk", "sae-batchtopk", "sae-jumprelu", "sae-relu")
STEPS, REFITS = 1000, 5
PAIRS = {64: 2 * 2 + 3 * 2, 576: 2 + 2 * 2, 1536: 2 + 2 * 2}  # (study, k) pairs per input dimension


def per_step(name: str, d: int, threads: int) -> tuple[float, float, str]:
    """(wall, CPU) seconds a step of `name` at d_in d after the warm-up, and the trainer's estimate line."""
    lines: list[str] = []
    marks: list[tuple[int, float, float]] = []
    original_info, original_after = ui.info, timing.RunEstimate.after_step

    def after_step(self: timing.RunEstimate, step: int) -> None:
        marks.append((step, time.perf_counter(), time.process_time()))
        original_after(self, step)

    ui.info, timing.RunEstimate.after_step = lines.append, after_step
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16384, d, generator=g) * torch.rand(16384, d, generator=g).pow(3) * 3  # (rows, d)
        dec = create(name, k=32, width=8 * d, steps=STEPS, batch_size=4096, seed=0)
        train_sae(dec, x, {"threads": threads, "log_every": STEPS}, stop_after=1 + timing.ESTIMATE_STEPS + 2)
    finally:
        ui.info, timing.RunEstimate.after_step = original_info, original_after
    (s1, w1, c1), (s2, w2, c2) = marks[0], marks[-1]  # after the warm-up step .. after the last
    line = next((ln for ln in lines if "estimated" in ln), "(no estimate line: the fit takes under 2 minutes)")
    return (w2 - w1) / (s2 - s1), (c2 - c1) / (s2 - s1), line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="64,576,1536", help="input dimensions, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lo = hi = 0.0
    for d in (int(s) for s in args.sizes.split(",")):
        cpu = []
        for name in VARIANTS:
            wall, c, line = per_step(name, d, args.threads)
            cpu.append(c)
            print(f"d={d:5d} width={8 * d:6d} {name:14s} wall {wall:7.3f} s/step  cpu {c:7.3f} s/step  "
                  f"load {os.getloadavg()[0]:.1f} :: {line}", flush=True)
        n = PAIRS.get(d, 1)
        once = sum(cpu) * STEPS
        a, b = n * (once + (REFITS - 1) * min(cpu) * STEPS), n * (once + (REFITS - 1) * max(cpu) * STEPS)
        lo, hi = lo + a, hi + b
        print(f"d={d}: {n} (study, k) pairs x ({len(VARIANTS)} SAEs + {REFITS - 1} refits) x {STEPS} steps: "
              f"{a / 3600:.1f}-{b / 3600:.1f} CPU-hours", flush=True)
    print(f"SAE training of the study: {lo / 3600:.0f}-{hi / 3600:.0f} CPU-hours on {args.threads} thread(s) "
          f"({lo / 86400:.1f}-{hi / 86400:.1f} days)")


if __name__ == "__main__":
    main()
