"""What the SAE training benches share: the activations, the split, the batch order, the scale, the
interleaved run of interplab against its peers, and the held-out scores.

Data: SmolLM2-135M `resid_post.6` (d_in 576), 131072 training tokens harvested once into the user
cache and cycled over, and 16384 held-out tokens that score the comparison. With `--validation`
the benches never read the held-out tokens: they train on the first 114688 training tokens and
score on the last 16384 of them, the split on which TrainConfig's defaults were chosen.

Both sides see identical scaled batches: interplab's own stream (a seeded permutation per epoch)
and scale (E||x||^2 = d_in on its first 8 batches) decide them, and the peers read the same rows,
order and scale from a safetensors file. Imports of interplab stay inside the functions, so a peer
process (which has no interplab) can import `fvu64` from here.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".bench-peers" / "bin" / "python"
D_IN, SITE = 576, "resid_post.6"
TOKENS, EVAL_TOKENS, SEQ_LEN = 131072, 16384, 128


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options every SAE training bench takes: run length, sizes, learning rate, threads, seed,
    the interleaving block and interplab's decoder norm."""
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="60 steps: the speed ratio, not FVU parity")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=10, help="steps per turn when the trainers alternate")
    ap.add_argument("--decoder-norm", choices=["unit", "free"], default=None, help="interplab's TrainConfig.decoder_norm")


def fvu64(x: torch.Tensor, recon: torch.Tensor) -> float:
    """E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), accumulated in float64 over the whole set."""
    x, recon = x.double(), recon.double()
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_peak(threads: int, n: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of the best of `reps` (n, n) @ (n, n) float32 products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def load_average() -> float:
    return os.getloadavg()[0]


def activations() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) rows of SmolLM2 resid_post.6, harvested once into the user cache."""
    from interplab import cache, ui
    from interplab.errors import UserError
    from interplab.store import ActivationStore, HarvestConfig, harvest
    from interplab.subjects import load_subject

    cfg = HarvestConfig(subject="smollm2", subject_config={"seq_len": SEQ_LEN}, sites=[SITE],
                        tokens=TOKENS + EVAL_TOKENS, batch_size=16, shard_tokens=16384)
    folder = cache.entry("bench-activations", cfg.model_dump(mode="json"))
    try:
        store = ActivationStore(folder)
    except UserError:  # not harvested yet, or interrupted: harvest resumes
        ui.info(f"harvesting {TOKENS + EVAL_TOKENS} tokens of smollm2 {SITE} into {folder}")
        harvest(load_subject("smollm2", seq_len=SEQ_LEN), cfg, folder)
        store = ActivationStore(folder)
    x = store.all(SITE)  # (tokens + eval_tokens, 576), in harvest order: sequences never straddle the cut
    return x[:TOKENS].contiguous(), x[TOKENS:].contiguous()


@dataclass
class Setup:
    """One comparison's data: what both sides train on, in which order and scale, and what scores them."""

    x: torch.Tensor  # (rows, d_in) training rows, raw
    x_eval: torch.Tensor  # (eval, d_in) scoring rows, raw
    split: str  # "held-out" or "validation"
    scale: float  # inputs times this have E||x||^2 = d_in
    mean: torch.Tensor  # (d_in,) mean of the raw rows of the first batches (b_dec's start, unscaled)
    variance: float  # mean squared distance from the mean per token, in scaled units
    order: torch.Tensor  # (steps, batch) row indices of each step's batch
    steps: int
    batch: int
    seed: int


def prepare(steps: int, batch: int, seed: int, validation: bool, norm_batches: int = 8) -> Setup:
    """The data, the scale and the batch order interplab's TensorStream will use."""
    from interplab.decompose.streams import TensorStream, generator
    from interplab.decompose.train import input_scale

    x, x_eval = activations()
    split = "held-out"
    if validation:  # the held-out tokens stay unread; the training tokens' tail scores
        x, x_eval, split = x[:-EVAL_TOKENS].contiguous(), x[-EVAL_TOKENS:].contiguous(), "validation"
    stream = TensorStream(x, batch, seed)
    scale, mean = input_scale(stream, norm_batches)
    epochs = -(-steps // stream.steps_per_epoch)
    order = torch.stack([torch.randperm(x.shape[0], generator=generator(seed, e)) for e in range(epochs)])
    order = order[:, : stream.steps_per_epoch * batch].reshape(-1, batch)[:steps]  # (steps, batch)
    assert torch.equal(stream.batch(steps - 1), x[order[-1]])  # the peers get exactly these rows
    first = torch.cat([stream.batch(i) for i in range(norm_batches)]).double() * scale  # (rows, d)
    variance = float((first - first.mean(0)).pow(2).sum(1).mean())
    return Setup(x, x_eval, split, scale, mean, variance, order, steps, batch, seed)


def train_interleaved(module: Any, cfg: Any, setup: Setup, peers: list, block: int) -> tuple[Any, float]:
    """interplab's `train_sae` on `module` (weights acting on raw inputs), its blocks alternating
    with the peers' (see paced.py); returns the trained module and interplab's own seconds."""
    from paced import PacedStream, run_interleaved

    from interplab import ui
    from interplab.decompose.streams import Stream, TensorStream
    from interplab.decompose.train import train_sae

    class Paced(PacedStream, Stream):
        pass

    stream = Paced(TensorStream(setup.x, setup.batch, setup.seed), peers, block, skip=cfg.norm_batches)
    ui.set_quiet(True)
    return run_interleaved(lambda s: train_sae(module, s, cfg), stream)


def scores(codec: Any, x_eval: torch.Tensor) -> dict[str, float]:
    """Held-out (or validation) FVU in float64, mean L0 and latents silent on every scoring row."""
    with torch.no_grad():
        out = codec.eval().forward(x_eval)
    active = out.codes != 0  # (n, d_sae)
    return {"fvu": fvu64(x_eval, out.recon), "l0": float(active.sum(1).float().mean()),
            "silent": int((~active.any(0)).sum())}


def machine() -> str:
    """CPU model and vector extensions, from lscpu."""
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("Flags")), [])
    vec = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return f"{model} ({vec}), {os.cpu_count()} logical CPUs"
