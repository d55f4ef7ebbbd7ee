"""The same TopK SAE trained by interplab and by SAELens's SAETrainer on the same batches.

TopK SAE, d_in 576 (SmolLM2-135M resid_post.6), width 4608, k 32, batch 4096, 300 steps, one
initialisation (unit decoder rows, W_enc = W_dec^T, b_enc = 0, b_dec = data mean) and one learning
rate with SAELens's "constant" schedule decaying linearly over the last 20% of steps. Both sides see
identical scaled batches: interplab's own stream (a seeded permutation per epoch) and scale
(E||x||^2 = d_in on its first 8 batches) decide them, and the SAELens side, a subprocess of
.bench-peers/bin/python (`make bench-peers`), reads the same rows, order and scale from a
safetensors file and trains with normalize_activations="none".

Harvesting runs at ~2000 tokens/s on a 2-core machine, so 300 x 4096 = 1.2M distinct tokens would
take ten minutes; by default 131072 training tokens are harvested and cycled over (about 9
epochs), plus 16384 held-out tokens for the final FVU.

Prints steps/s of both and their ratio (target >= 1.5x), both held-out FVUs (target: within 0.01),
interplab's achieved GFLOP/s (encoder product + sparse decoder and its gradients, the flops its
step actually performs; AuxK and Adam not counted) as a fraction of the float32 matmul peak
measured in the same run (target >= 50%), and a microbenchmark of sparse against dense decoding.

    make bench-peers && .venv/bin/python bench/sae_train_vs_saelens.py [--threads 1] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".bench-peers" / "bin" / "python"
D_IN, SITE = 576, "resid_post.6"


def fvu64(x: torch.Tensor, recon: torch.Tensor) -> float:
    """E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), accumulated in float64 over the whole set."""
    x, recon = x.double(), recon.double()
    return float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def matmul_peak(threads: int, n: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of the best of `reps` (n, n) @ (n, n) float32 products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- SAELens side (runs inside .bench-peers; imports nothing from interplab) ------------------------
def saelens_side(folder: Path) -> None:
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from safetensors.torch import load_file

    p = json.loads((folder / "job.json").read_text())
    torch.set_num_threads(p["threads"])
    t = load_file(str(folder / "inputs.safetensors"))
    cfg = TopKTrainingSAEConfig(d_in=D_IN, d_sae=p["width"], k=p["k"], aux_loss_coefficient=p["aux"],
                                rescale_acts_by_decoder_norm=p["rescale"], use_sparse_activations=p["sparse"],
                                normalize_activations="none", apply_b_dec_to_input=True, decoder_init_norm=None)
    sae = TopKTrainingSAE(cfg)
    sae.load_state_dict({n: t[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")})
    x, order, scale = t["x_train"], t["order"], p["scale"]

    def batches():
        for i in range(order.shape[0]):
            yield x[order[i]] * scale  # (batch, d_in): the rows and scale interplab's stream used

    trainer_cfg = SAETrainerConfig(
        total_training_samples=p["steps"] * p["batch"], train_batch_size_samples=p["batch"], lr=p["lr"],
        lr_end=p["lr"], lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=p["decay_steps"],
        dead_feature_window=p["dead_window"], feature_sampling_window=10**9, device="cpu", autocast=False,
        n_checkpoints=0, save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(trainer_cfg, sae, batches())
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    sae.eval()
    with torch.no_grad():
        x_eval = t["x_eval"] * scale
        recon = sae(x_eval)
    sae.save_inference_model(str(folder / "saelens_sae"))
    out = {"seconds": seconds, "steps": trainer.n_training_steps, "fvu": fvu64(x_eval, recon),
           "dead": int(trainer.dead_neurons.sum())}
    (folder / "result.json").write_text(json.dumps(out))


# --- interplab side ------------------------------------------------------------------------------------
def activations(tokens: int, eval_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) rows of SmolLM2 resid_post.6, harvested once into the user cache."""
    from interplab import cache, ui
    from interplab.errors import UserError
    from interplab.store import ActivationStore, HarvestConfig, harvest
    from interplab.subjects import load_subject

    cfg = HarvestConfig(subject="smollm2", subject_config={"seq_len": seq_len}, sites=[SITE],
                        tokens=tokens + eval_tokens, batch_size=16, shard_tokens=16384)
    folder = cache.entry("bench-activations", cfg.model_dump(mode="json"))
    try:
        store = ActivationStore(folder)
    except UserError:  # not harvested yet, or interrupted: harvest resumes
        ui.info(f"harvesting {tokens + eval_tokens} tokens of smollm2 {SITE} into {folder}")
        harvest(load_subject("smollm2", seq_len=seq_len), cfg, folder)
        store = ActivationStore(folder)
    x = store.all(SITE)  # (tokens + eval_tokens, 576), in harvest order: sequences never straddle the cut
    return x[:tokens].contiguous(), x[tokens:].contiguous()


def decode_microbench(threads: int, n: int = 4096, m: int = 4608, k: int = 32) -> tuple[float, float]:
    """ms for forward + backward of the decoder at the bench's sizes: sparse (gather the k rows,
    as FastTopKStep does) against dense (scatter the codes into (n, m), then matmuls)."""
    import torch.nn.functional as F

    from interplab.decompose.steps import Scatter, row_dots

    torch.set_num_threads(threads)
    W, g = torch.randn(m, D_IN), torch.randn(n, D_IN)
    vals, idx = torch.randn(n, m).topk(k, dim=1)

    def sparse():
        F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum")
        row_dots(idx, g, W)
        Scatter(idx.reshape(-1), m)(torch.arange(n).repeat_interleave(k), vals.reshape(-1), g)

    def dense():
        codes = torch.zeros(n, m).scatter_(1, idx, vals)  # (n, m)
        codes @ W
        (g @ W.T).gather(1, idx)
        codes.T @ g

    sparse(), dense()
    return (min(_timed(sparse) for _ in range(3)) * 1e3, min(_timed(dense) for _ in range(3)) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--tokens", type=int, default=131072, help="training tokens harvested (cycled over)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=None, help="interplab's Adam epsilon (default: TrainConfig's)")
    ap.add_argument("--saelens-sparse", action="store_true", help="SAELens's use_sparse_activations=True")
    ap.add_argument("--saelens-no-rescale", action="store_true",
                    help="SAELens's rescale_acts_by_decoder_norm=False (its default for TopK is True)")
    ap.add_argument("--skip-saelens", action="store_true")
    ap.add_argument("--saelens-side", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.saelens_side:
        saelens_side(args.saelens_side)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from interplab import ui
    from interplab.decompose.sae import TopKSAE
    from interplab.decompose.streams import TensorStream, generator
    from interplab.decompose.train import TrainConfig, input_scale, train_sae

    torch.set_num_threads(args.threads)
    x, x_eval = activations(args.tokens, args.eval_tokens, args.seq_len)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, decay=0.2, seed=args.seed,
                      threads=args.threads, **({"adam_eps": args.eps} if args.eps else {}))
    stream = TensorStream(x, args.batch, args.seed)
    scale, mean = input_scale(stream, cfg.norm_batches)
    order = torch.stack([torch.randperm(x.shape[0], generator=generator(args.seed, e))
                         for e in range(-(-args.steps // stream.steps_per_epoch))])  # (epochs, n)
    order = order[:, : stream.steps_per_epoch * args.batch].reshape(-1, args.batch)[: args.steps]  # (steps, batch)
    assert torch.equal(stream.batch(args.steps - 1), x[order[-1]])  # the SAELens side gets these rows
    sae = TopKSAE(D_IN, args.width, args.k)
    sae.init_(mean * scale, generator(args.seed, -1))  # in scaled units, as both trainers see the data
    init = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    run_tokens = args.steps * args.batch
    dead_steps = max(10, run_tokens // 10 // args.batch)  # interplab's default dead_tokens, in steps
    peak = [matmul_peak(args.threads)]
    print(f"torch {torch.__version__}, {args.threads} thread(s); {x.shape[0]} training tokens cycled over "
          f"{args.steps} steps of {args.batch} (~{run_tokens / x.shape[0]:.1f} epochs); scale {scale:.4g}", flush=True)

    sae.fold_scale_(scale)  # train_sae takes weights that act on raw inputs, and unfolds them itself
    ui.set_quiet(True)
    seconds = _timed(lambda: train_sae(sae, x, cfg))
    with torch.no_grad():
        out = sae.eval()(x_eval)
        ours = {"seconds": seconds, "fvu": fvu64(x_eval, out.recon), "dead": int(((out.codes != 0).sum(0) == 0).sum())}
    peak.append(matmul_peak(args.threads))
    theirs = None if args.skip_saelens else run_saelens(args, x, x_eval, order, init, scale, dead_steps, save_file)
    peak.append(matmul_peak(args.threads))
    report(args, ours, theirs, max(peak), peak)


def run_saelens(args, x, x_eval, order, init, scale, dead_steps, save_file) -> dict:
    if not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing; run `make bench-peers` first (or pass --skip-saelens)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file({"x_train": x, "x_eval": x_eval, "order": order, **init}, str(folder / "inputs.safetensors"))
        job = {"width": args.width, "k": args.k, "aux": 1 / 32, "sparse": args.saelens_sparse, "scale": scale,
               "rescale": not args.saelens_no_rescale,
               "steps": args.steps, "batch": args.batch, "lr": args.lr, "decay_steps": round(0.2 * args.steps),
               "dead_window": dead_steps - 1, "threads": args.threads}  # SAELens: dead when passes > window
        (folder / "job.json").write_text(json.dumps(job))
        subprocess.run([str(PEERS_PYTHON), __file__, "--saelens-side", str(folder)], check=True,
                       stderr=subprocess.DEVNULL)
        out = json.loads((folder / "result.json").read_text())
        from interplab.decompose import load

        theirs = load(folder / "saelens_sae")  # their saved file, read by interplab; it acts on scaled inputs
        back = theirs.forward(x_eval * scale)
        out["fvu_loaded"] = fvu64(x_eval * scale, back.recon)
        out["dead_eval"] = int(((back.codes != 0).sum(0) == 0).sum())
        return out


def report(args, ours: dict, theirs: dict | None, peak: float, peaks: list[float]) -> None:
    n, d, m, k = args.batch, D_IN, args.width, args.k
    flops = args.steps * (2 * n * d * m + 8 * n * k * d)  # encoder + gather, SDDMM, two CSR products
    gflops = flops / ours["seconds"] / 1e9
    ours_rate = args.steps / ours["seconds"]
    sparse_ms, dense_ms = decode_microbench(args.threads)
    print(f"matmul peak (4096^3 float32, best of 3, measured {len(peaks)}x): "
          f"{', '.join(f'{p:.1f}' for p in peaks)} GFLOP/s -> peak {peak:.1f}")
    print(f"interplab : {ours['seconds']:7.1f} s  {ours_rate:6.3f} steps/s  held-out FVU {ours['fvu']:.4f}; "
          f"latents silent on held-out {ours['dead']}")
    if theirs:
        rate = theirs["steps"] / theirs["seconds"]
        print(f"SAELens   : {theirs['seconds']:7.1f} s  {rate:6.3f} steps/s  held-out FVU {theirs['fvu']:.4f} "
              f"(read back by interplab: {theirs['fvu_loaded']:.4f}); latents silent on held-out "
              f"{theirs['dead_eval']}, dead by its own count {theirs['dead']}"
              f"{' [use_sparse_activations]' if args.saelens_sparse else ''}"
              f"{' [rescale_acts_by_decoder_norm=False]' if args.saelens_no_rescale else ''}")
        print(f"steps/s ratio interplab / SAELens: {ours_rate / rate:.2f}x   (target >= 1.5x)")
        print(f"FVU difference: {abs(ours['fvu'] - theirs['fvu']):.4f}   (target <= 0.01)")
    print(f"interplab achieved {gflops:.1f} GFLOP/s = {gflops / peak:.0%} of the matmul peak   (target >= 50%)")
    print(f"decoder fwd+bwd at n={n}, d_sae={m}, k={k}: sparse {sparse_ms:.1f} ms, dense {dense_ms:.1f} ms")


if __name__ == "__main__":
    main()
