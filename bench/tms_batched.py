"""Training 100 TMS instances as one batched model against a Python loop over the same 100.

Both sides use the same trainer (`interplab.subjects.tms._fit`: hand-written backward, fused
AdamW, one thread), the same steps and batch size; the loop trains 100 single-instance models one
after the other, the batched side one model with a leading instance dimension of 100. The cache is
bypassed. Target: ratio >= 10x. Timings on a shared machine are noisy: take the median of --reps.
The mean final losses are printed as a sanity check only: every model of the loop starts from the
seed-0 initialisation and sees the seed-0 batches, while the batched instances draw independent ones.

    .venv/bin/python bench/tms_batched.py [--instances 100] [--steps 1000] [--features 5] [--hidden 2]
                                          [--batch 1024] [--reps 1] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from interplab import ui
from interplab.runtime import single_thread
from interplab.subjects.tms import TMSConfig, _fit


def configs(args: argparse.Namespace) -> tuple[TMSConfig, list[TMSConfig]]:
    dens = [float(d) for d in 20.0 ** -np.linspace(0, 1, args.instances)]  # one density per instance
    common = {"n_features": args.features, "n_hidden": args.hidden, "variant": "relu", "steps": args.steps,
              "batch_size": args.batch, "seed": 0}
    return TMSConfig(density=dens, **common), [TMSConfig(density=[d], **common) for d in dens]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--features", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="200 steps, 1 repetition")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.reps = 200, 1
    ui.set_quiet(True)
    batched_cfg, loop_cfgs = configs(args)
    batched, looped, loss_b, loss_l = [], [], 0.0, 0.0
    with single_thread():
        # Warm-up outside the clock: the first fit of a process pays one-time costs (kernel and
        # optimizer initialisation, about 2 s measured) that would otherwise land on whichever side runs first.
        _fit(batched_cfg.model_copy(update={"steps": 2}))
        _fit(loop_cfgs[0].model_copy(update={"steps": 2}))
        for _ in range(args.reps):
            t = time.perf_counter()
            loss_b = float(_fit(batched_cfg).final_loss.mean())
            batched.append(time.perf_counter() - t)
            t = time.perf_counter()
            loss_l = float(np.mean([float(_fit(c).final_loss[0]) for c in loop_cfgs]))
            looped.append(time.perf_counter() - t)
    tb, tl = statistics.median(batched), statistics.median(looped)
    print(f"tms {args.features} features in {args.hidden} dims, {args.instances} instances, {args.steps} steps, "
          f"batch {args.batch}, 1 thread, median of {args.reps}")
    print(f"  batched (one model, leading instance dim): {tb:8.2f} s   mean final loss {loss_b:.5f}")
    print(f"  Python loop over {args.instances} models:        {tl:8.2f} s   mean final loss {loss_l:.5f}")
    print(f"  ratio loop / batched: {tl / tb:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
