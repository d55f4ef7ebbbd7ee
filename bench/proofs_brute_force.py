"""Brute force of one max-of-4 model (all 64^4 = 16,777,216 inputs) against a plain batched forward.

Both sides answer the same question for every input (is the argmax of the last-position logits the
max token?) on the same trained model (the `maxofk` subject's default, from the cache), in the same
process, on the same threads. The plain side runs `model(tokens)` on batches of all inputs in order
(generated from their index, counted in its time); the brute force is `interplab.explain.brute_force`
on the path tables (their computation included). Targets (issue 13): brute force under 2 minutes on
2 cores and at most 1.5x the plain forward. FLOPs: the brute force counts its operations; the plain
forward's are torch's FlopCounterMode count of its matmuls (a lower bound: elementwise ops not
included). Timings on a shared machine are noisy: wall and CPU seconds are both printed, with the
load average.

    .venv/bin/python bench/proofs_brute_force.py [--threads 1] [--batch 65536] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from interplab import ui
from interplab.explain import Weights, brute_force, paths
from interplab.subjects.maxofk import MaxOfKConfig, train_maxofk


def all_inputs(start: int, stop: int, vocab: int, k: int) -> torch.Tensor:
    """Inputs start..stop-1 in base-vocab order (batch, k)."""
    idx = torch.arange(start, stop)
    return torch.stack([(idx // vocab ** (k - 1 - i)) % vocab for i in range(k)], 1)


@torch.no_grad()
def plain_forward(model, vocab: int, k: int, batch: int, limit: int | None = None) -> tuple[int, float]:
    """(correct inputs, matmul FLOPs) of model(tokens) over every input."""
    total = vocab**k if limit is None else limit
    with FlopCounterMode(display=False) as counter:
        model(all_inputs(0, batch, vocab, k))
    flops_per_batch = counter.get_total_flops()
    correct = 0
    for start in range(0, total, batch):
        tokens = all_inputs(start, min(total, start + batch), vocab, k)  # (batch, k)
        correct += int((model(tokens).argmax(-1) == tokens.max(1).values).sum())
    return correct, flops_per_batch * total / batch


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (on a busy machine one is fastest)")
    ap.add_argument("--batch", type=int, default=1 << 16)
    ap.add_argument("--quick", action="store_true", help="the plain forward on 1/16 of the inputs, extrapolated")
    args = ap.parse_args()
    ui.set_quiet(True)
    torch.set_num_threads(args.threads)
    model = train_maxofk(MaxOfKConfig())
    V, k = 64, 4
    bf, bf_wall, bf_cpu = timed(lambda: brute_force(paths(Weights.of(model))))
    limit = V**k // 16 if args.quick else None
    (fw_correct, fw_flops), fw_wall, fw_cpu = timed(lambda: plain_forward(model, V, k, args.batch, limit))
    scale = 16 if args.quick else 1
    fw_wall, fw_cpu, fw_flops = fw_wall * scale, fw_cpu * scale, fw_flops * scale
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f}")
    print(f"brute force   : {bf_wall:7.2f} s wall, {bf_cpu:7.2f} s CPU, {bf.flops:.3g} FLOPs, accuracy {bf.accuracy:.7f}")
    print(f"plain forward : {fw_wall:7.2f} s wall, {fw_cpu:7.2f} s CPU, {fw_flops:.3g} matmul FLOPs"
          + (" (extrapolated from 1/16)" if args.quick else f", accuracy {fw_correct / V**k:.7f}"))
    print(f"ratio brute/plain: {bf_wall / fw_wall:.3f} wall, {bf_cpu / fw_cpu:.3f} CPU, {bf.flops / fw_flops:.3f} FLOPs "
          f"(target <= 1.5); brute force under 120 s: {bf_wall < 120}")


if __name__ == "__main__":
    main()
