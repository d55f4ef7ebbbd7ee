"""Capture overhead and early-stop speed-up on the real SmolLM2-135M.

1. Forward pass with `capture` on 4 sites against a plain forward on the same batch (target <= 1.05).
2. Harvest throughput in tokens/s at resid_post.6 with and without stopping after layer 6
   (target: early stop >= 3x faster).

    .venv/bin/python bench/capture_overhead.py [--batch 8] [--seq-len 128] [--reps 7] [--tokens 16384]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from interplab import ui
from interplab.hooks import capture
from interplab.store import HarvestConfig, harvest
from interplab.subjects import load_subject

SITES = ["resid_post.6", "mlp_out.6", "attn_out.12", "mlp_hidden.20"]


def time_forward(model, x, reps: int, sites=None, table=None) -> list[float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        with torch.no_grad():
            if sites:
                with capture(model, sites, sites=table):
                    model(x)
            else:
                model(x)
        times.append(time.perf_counter() - t)
    return times


def time_harvest(subject, tokens: int, early_stop: bool, batch: int) -> float:
    cfg = HarvestConfig(subject="smollm2", sites=["resid_post.6"], tokens=tokens, batch_size=batch,
                        shard_tokens=8192, early_stop=early_stop)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        harvest(subject, cfg, Path(d))
        return tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=16384)
    args = ap.parse_args()
    ui.set_quiet(True)
    subject = load_subject("smollm2", seq_len=args.seq_len)
    x = subject.sample(args.batch, torch.Generator().manual_seed(0))  # (batch, seq_len)
    table = dict(subject.sites)
    time_forward(subject.model, x, 2)  # warm-up
    plain, hooked = [], []
    for r in range(args.reps):  # interleaved, alternating which goes first, so drift hits both alike
        if r % 2:
            hooked += time_forward(subject.model, x, 1, SITES, table)
        plain += time_forward(subject.model, x, 1)
        if not r % 2:
            hooked += time_forward(subject.model, x, 1, SITES, table)
    p, h = statistics.median(plain), statistics.median(hooked)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {tuple(x.shape)}")
    print(f"plain forward      median {p * 1e3:8.1f} ms")
    print(f"capture on 4 sites median {h * 1e3:8.1f} ms   ({', '.join(SITES)})")
    print(f"capture / plain ratio: {h / p:.3f}   (target <= 1.05)")
    full = time_harvest(subject, args.tokens, early_stop=False, batch=args.batch)
    early = time_harvest(subject, args.tokens, early_stop=True, batch=args.batch)
    print(f"harvest resid_post.6, full forward : {full:9.0f} tokens/s")
    print(f"harvest resid_post.6, early stop   : {early:9.0f} tokens/s")
    print(f"early-stop speed-up: {early / full:.2f}x   (target >= 3x)")


if __name__ == "__main__":
    main()
