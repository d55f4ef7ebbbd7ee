"""Data-parallel SAE training: 1 process against 2 torchrun processes on the same global batches.

The bench settings (TopK, d_in 576 from SmolLM2-135M resid_post.6, width 4608, k 32, global batch
4096, AuxK 1/32) trained by `train_sae` for `--steps` steps, alone and under
`torchrun --nproc_per_node 2` (gloo; each rank trains 2048 rows of every batch and the gradients are
all-reduced, `interplab.parallel`). Every process runs one torch thread. The two arms alternate
(1, 2, 1, 2, ...) for `--repeats` rounds so both see the same mix of load on a shared machine, and
the time counted is that of the training steps alone (from the first training batch to the end,
process start and data loading excluded).

Scaling efficiency = steps/s with 2 ranks / (2 x steps/s with 1): 100% when the two processes
together do twice the work of one. On a 2-core machine it can reach 100% only when nothing else
runs; the load average is printed beside every run.

    .venv/bin/python bench/sae_scaling.py [--quick] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sae_common import ROOT, load_average, machine


def worker(out: Path, steps: int, width: int, k: int, batch: int) -> None:
    """One rank (or the single process): train, and on rank 0 write the training seconds."""
    from sae_common import activations

    from interplab import ui
    from interplab.decompose import create
    from interplab.decompose.streams import Stream, TensorStream
    from interplab.decompose.train import train_sae
    from interplab.parallel import World

    torch.set_num_threads(1)
    ui.set_quiet(True)
    world = World.from_env("cpu")
    x, _ = activations()

    class Timed(TensorStream):
        started: float | None = None
        calls = 0

        def batch(self, i: int) -> torch.Tensor:
            self.calls += 1
            if self.calls == 9:  # after the 8 batches of the scale estimate: the first training step
                self.started = time.perf_counter()
            return super().batch(i)

    stream = Timed(x, batch, seed=0)
    assert isinstance(stream, Stream)
    world.barrier()
    train_sae(create("sae-topk", k=k, width=width, steps=steps, batch_size=batch), stream, {"threads": 1})
    seconds = time.perf_counter() - stream.started
    if world.main:
        out.write_text(json.dumps({"seconds": seconds, "steps": steps, "ranks": world.size}))
    world.close()


def launch(procs: int, out: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    me = [str(Path(__file__).resolve()), "--worker", str(out), "--steps", str(args.steps), "--width",
          str(args.width), "--k", str(args.k), "--batch", str(args.batch)]
    cmd = ([sys.executable, *me] if procs == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
            str(29400 + os.getpid() % 1000), *me])
    before = load_average()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text()) | {"load": (before + load_average()) / 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="15 steps, 2 rounds")
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.width, args.k, args.batch)
        return
    if args.quick:
        args.steps, args.repeats = 15, 2
    print(f"{machine()}; torch {torch.__version__}; TopK width {args.width}, k {args.k}, global batch {args.batch}, "
          f"{args.steps} steps per run, 1 thread per process; {args.repeats} rounds of (1 process, 2 processes)",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            one = launch(1, Path(tmp) / f"one{r}.json", args)
            two = launch(2, Path(tmp) / f"two{r}.json", args)
            rate1, rate2 = one["steps"] / one["seconds"], two["steps"] / two["seconds"]
            rows.append(rate2 / (2 * rate1))
            print(f"round {r}: 1 process {rate1:.3f} steps/s (load {one['load']:.1f}), 2 processes {rate2:.3f} "
                  f"steps/s (load {two['load']:.1f}): speed-up {rate2 / rate1:.2f}x, efficiency {rows[-1]:.0%}",
                  flush=True)
    print(f"scaling efficiency (steps/s with 2 ranks / (2 x steps/s with 1)): median {statistics.median(rows):.0%}, "
          f"rounds {', '.join(f'{e:.0%}' for e in rows)}")


if __name__ == "__main__":
    main()
