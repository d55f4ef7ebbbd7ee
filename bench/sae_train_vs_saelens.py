"""Every SAE variant trained by interplab and by SAELens's SAETrainer on the same batches, interleaved.

Variants (SAELens's name): topk (topk), batchtopk (batchtopk), jumprelu (jumprelu, L0 "step"
penalty), relu (standard, L1 weighted by the decoder norms). Per variant both sides start from one
initialisation (interplab's `init_`: random rows at the architecture's decoder norm, W_enc = W_dec^T,
b_enc = 0, b_dec = data mean), see the same scaled batches in the same order (sae_common.py) with one
learning rate and SAELens's "constant" schedule decaying linearly over the last 20% of steps, AuxK
1/32 for TopK and BatchTopK, and for JumpReLU and ReLU one fixed sparsity coefficient (given in
SAELens's units, its per-token penalty beside the per-token summed squared error, and converted
into interplab's, which divides both by the batch's variance) warmed up over the first 5% of steps.
JumpReLU's thresholds start where the initial SAE fires 4k latents per token on the first training
batch (`start_threshold`), both trainers alike.
Everything else is each library's default: SAELens clips the gradient norm at 1 and leaves the
decoder norm free (rescaling TopK's ranking by it); interplab follows TrainConfig.

The two trainers alternate in blocks of `--block` steps (paced.py), so both see the same load on a
shared machine; each one's steps/s counts its own blocks only. The SAELens side runs in
.bench-peers (`make bench-peers`) and its saved folder is read back by `interplab.decompose.load`,
which scores it exactly as interplab's own SAE is scored (held-out FVU in float64, L0).

Prints per variant: steps/s of both and their ratio (target >= 3x), both FVUs (target: within 0.01)
and L0s; for TopK also interplab's achieved GFLOP/s against the float32 matmul peak measured in the
same run (target >= 50%). `--quick` runs 60 steps, enough for the speed ratio (not for FVU parity).

    make bench-peers
    .venv/bin/python bench/sae_train_vs_saelens.py --threads 1 --variant all [--quick] [--lr 8e-4]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from paced import Peer, PeerPacer
from sae_common import (D_IN, PEERS_PYTHON, Setup, add_common_args, load_average, machine, matmul_peak, prepare,
                        scores, timed, train_interleaved)

VARIANTS = ("topk", "batchtopk", "jumprelu", "relu")
COEFFICIENT = {"jumprelu": 1.0, "relu": 5.0}  # SAELens units; interplab's defaults for its own units


# --- SAELens side (runs inside .bench-peers; imports nothing from interplab) ------------------------
def saelens_side() -> None:
    import sae_lens as sl
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig
    from safetensors.torch import load_file

    pacer = PeerPacer.from_argv()
    p = pacer.job()
    torch.set_num_threads(p["threads"])
    t = load_file(str(pacer.folder / "inputs.safetensors"))
    common = dict(d_in=D_IN, d_sae=p["width"], normalize_activations="none", apply_b_dec_to_input=True,
                  decoder_init_norm=None)
    variant, warm = p["variant"], p["warmup_steps"]
    if variant == "topk":
        sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=p["k"], aux_loss_coefficient=p["aux"], **common))
    elif variant == "batchtopk":
        sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(k=p["k"], aux_loss_coefficient=p["aux"],
                                                                    **common))
    elif variant == "jumprelu":
        sae = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(
            l0_coefficient=p["coefficient"], l0_warm_up_steps=warm, jumprelu_init_threshold=p["init_threshold"],
            jumprelu_bandwidth=p["bandwidth"], jumprelu_sparsity_loss_mode="step", **common))
    else:
        sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(l1_coefficient=p["coefficient"],
                                                                  l1_warm_up_steps=warm, **common))
    init = {n: t[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if variant == "jumprelu":
        init["threshold"] = torch.full((p["width"],), p["init_threshold"])
    missing = sae.load_state_dict(init, strict=False).missing_keys
    assert set(missing) <= {"topk_threshold"}, missing
    x, order, scale = t["x_train"], t["order"], p["scale"]

    trainer_cfg = SAETrainerConfig(
        total_training_samples=p["steps"] * p["batch"], train_batch_size_samples=p["batch"], lr=p["lr"],
        lr_end=p["lr"], lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=p["decay_steps"],
        dead_feature_window=p["dead_window"], feature_sampling_window=10**9, device="cpu", autocast=False,
        n_checkpoints=0, save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(trainer_cfg, sae, pacer.batches(lambda i: x[order[i]] * scale, p["steps"]))
    trainer.fit()
    pacer.end_blocks()
    sae.save_inference_model(str(pacer.folder / "saelens_sae"))
    pacer.done({"steps": trainer.n_training_steps, "dead": int(trainer.dead_neurons.sum())})


# --- interplab side ------------------------------------------------------------------------------------
def interplab_module(variant: str, width: int, k: int, setup: Setup, threshold_lr_scale: float | None = None):
    from interplab.decompose.sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE
    from interplab.decompose.sae import JumpReLUSettings
    from interplab.decompose.streams import generator

    if variant == "topk":
        sae = TopKSAE(D_IN, width, k)
    elif variant == "batchtopk":
        sae = BatchTopKSAE(D_IN, width, k)
    elif variant == "jumprelu":
        s = JumpReLUSettings()  # the decomposer's defaults: bandwidth, threshold lr scale
        scale = s.threshold_lr_scale if threshold_lr_scale is None else threshold_lr_scale
        sae = JumpReLUSAE(D_IN, width, s.bandwidth, 1.0, "l0", threshold_lr_scale=scale)
    else:
        sae = ReLUSAE(D_IN, width)
    sae.init_(setup.mean * setup.scale, generator(setup.seed, -1))  # scaled units, as both trainers see the data
    if variant == "jumprelu":
        with torch.no_grad():
            sae.log_threshold.fill_(math.log(start_threshold(sae, setup, 4 * k)))
    return sae


def start_threshold(sae, setup: Setup, l0: int) -> float:
    """The JumpReLU threshold at which the initial SAE has mean L0 = `l0` on the first training batch.
    At SAELens's default (0.01, in units of inputs normalised to E||x||^2 = d_in) half the latents
    fire and stay firing for hundreds of steps, a dense regime that no trained SAE is in; starting
    both trainers at a few times the budget k measures them where SAEs spend their training."""
    x = setup.x[setup.order[0]] * setup.scale  # (batch, d_in): a training batch, never a scoring row
    with torch.no_grad():
        pre = sae.pre_acts(x).flatten()  # (batch d_sae,)
    return float(pre.kthvalue(pre.numel() - l0 * x.shape[0]).values)


def train_config(args: argparse.Namespace, variant: str, setup: Setup):
    from interplab.decompose.train import TrainConfig

    extra = {k: v for k, v in (("decoder_norm", args.decoder_norm), ("grad_clip", args.grad_clip),
                               ("adam_eps", args.eps)) if v is not None}
    coefficient = COEFFICIENT.get(variant, 0.0) * D_IN / setup.variance  # SAELens's units -> interplab's
    return TrainConfig(steps=setup.steps, batch_size=setup.batch, lr=args.lr, decay=0.2, seed=setup.seed,
                       threads=args.threads, aux_coefficient=1 / 32, sparsity_coefficient=coefficient,
                       sparsity_warmup=0.05, target_l0=None, **extra)


def run_variant(args: argparse.Namespace, variant: str, setup: Setup, folder: Path) -> dict:
    from safetensors.torch import save_file

    from interplab.decompose import load
    from interplab.decompose.train import default_dead_tokens

    cfg = train_config(args, variant, setup)
    sae = interplab_module(variant, args.width, args.k, setup, args.threshold_lr_scale)
    init = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    dead_steps = default_dead_tokens(setup.batch, setup.steps) // setup.batch  # interplab's, in steps
    warm = max(1, round(cfg.sparsity_warmup * setup.steps))
    peers = []
    if not args.skip_saelens:
        save_file({"x_train": setup.x, "order": setup.order, **init}, str(folder / "inputs.safetensors"))
        job = {"variant": variant, "width": args.width, "k": args.k, "aux": 1 / 32, "scale": setup.scale,
               "steps": setup.steps, "batch": setup.batch, "lr": args.lr, "decay_steps": round(0.2 * setup.steps),
               "dead_window": dead_steps - 1, "threads": args.threads, "block": args.block,
               "coefficient": COEFFICIENT.get(variant, 0.0), "warmup_steps": warm,
               "init_threshold": getattr(sae, "threshold", torch.zeros(1)).flatten()[0].item(),
               "bandwidth": getattr(sae, "bandwidth", 0.05)}  # SAELens: dead when passes > window
        (folder / "job.json").write_text(json.dumps(job))
        peers.append(Peer(PEERS_PYTHON, __file__, folder, "--saelens-side", folder / "saelens.log"))
    sae.fold_scale_(setup.scale)  # train_sae takes weights that act on raw inputs, and unfolds them itself
    load_before = load_average()
    sae, seconds = train_interleaved(sae, cfg, setup, peers, args.block)
    row = {"variant": variant, "ours": {"seconds": seconds, "steps": setup.steps, **scores(sae, setup.x_eval)},
           "load": (load_before + load_average()) / 2}
    if peers:
        theirs = peers[0].finish()
        back = load(folder / "saelens_sae")  # their saved file, read by interplab; it acts on scaled inputs
        theirs |= scores(back.codec_, setup.x_eval * setup.scale)
        row["theirs"] = theirs
    return row


def decode_microbench(threads: int, n: int = 4096, m: int = 4608, k: int = 32) -> tuple[float, float]:
    """ms for forward + backward of the decoder at the bench's sizes: sparse (gather the k rows,
    as the fast step does) against dense (scatter the codes into (n, m), then matmuls)."""
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
    return min(timed(sparse) for _ in range(3)) * 1e3, min(timed(dense) for _ in range(3)) * 1e3


def report(args: argparse.Namespace, rows: list[dict], peaks: list[float]) -> None:
    print(f"\n{'variant':10s} {'interplab steps/s':>17s} {'SAELens steps/s':>15s} {'ratio':>7s} "
          f"{'FVU ours':>9s} {'FVU SAELens':>11s} {'|diff|':>7s} {'L0 ours':>8s} {'L0 SAELens':>10s} {'load':>5s}")
    for r in rows:
        o, t = r["ours"], r.get("theirs")
        rate = o["steps"] / o["seconds"]
        line = f"{r['variant']:10s} {rate:17.3f} "
        if t:
            theirs = t["steps"] / t["seconds"]
            line += (f"{theirs:15.3f} {rate / theirs:6.2f}x {o['fvu']:9.4f} {t['fvu']:11.4f} "
                     f"{abs(o['fvu'] - t['fvu']):7.4f} {o['l0']:8.1f} {t['l0']:10.1f}")
        else:
            line += f"{'-':>15s} {'-':>7s} {o['fvu']:9.4f} {'-':>11s} {'-':>7s} {o['l0']:8.1f} {'-':>10s}"
        print(line + f" {r['load']:5.1f}")
    print("targets: ratio >= 3x per variant, |FVU difference| <= 0.01")
    topk = next((r for r in rows if r["variant"] == "topk"), None)
    if topk and peaks:
        n, d, m, k = args.batch, D_IN, args.width, args.k
        flops = topk["ours"]["steps"] * (2 * n * d * m + 8 * n * k * d)  # encoder + gather, SDDMM, two CSR products
        gflops = flops / topk["ours"]["seconds"] / 1e9
        sparse_ms, dense_ms = decode_microbench(args.threads)
        print(f"matmul peak (4096^3 float32, best of 3, measured {len(peaks)}x): "
              f"{', '.join(f'{p:.1f}' for p in peaks)} GFLOP/s -> peak {max(peaks):.1f}")
        print(f"interplab TopK achieved {gflops:.1f} GFLOP/s = {gflops / max(peaks):.0%} of the matmul peak "
              f"(target >= 50%)")
        print(f"decoder fwd+bwd at n={n}, d_sae={m}, k={k}: sparse {sparse_ms:.1f} ms, dense {dense_ms:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=[*VARIANTS, "all"], default="topk")
    add_common_args(ap)
    ap.add_argument("--validation", action="store_true",
                    help="train on the training tokens less their last 16384 and score on those (held-out unread)")
    ap.add_argument("--grad-clip", type=float, default=None, help="interplab's TrainConfig.grad_clip")
    ap.add_argument("--eps", type=float, default=None, help="interplab's Adam epsilon (default: TrainConfig's)")
    ap.add_argument("--threshold-lr-scale", type=float, default=None,
                    help="JumpReLU: learning rate of log(threshold) over lr (default: JumpReLUSettings', 10; "
                         "SAELens trains the threshold itself at lr)")
    ap.add_argument("--skip-saelens", action="store_true")
    ap.add_argument("--saelens-side", action="store_true", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.saelens_side:
        saelens_side()
        return
    if args.quick:
        args.steps = 60
    if not args.skip_saelens and not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing; run `make bench-peers` first (or pass --skip-saelens)")
    torch.set_num_threads(args.threads)
    setup = prepare(args.steps, args.batch, args.seed, args.validation)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    print(f"{machine()}; torch {torch.__version__}, {args.threads} thread(s); {setup.x.shape[0]} training tokens, "
          f"{args.steps} steps of {args.batch} (~{args.steps * args.batch / setup.x.shape[0]:.1f} epochs), "
          f"lr {args.lr}, scored on {setup.x_eval.shape[0]} {setup.split} tokens; blocks of {args.block} steps; "
          f"load average {load_average():.1f}", flush=True)
    peaks = [matmul_peak(args.threads)] if "topk" in variants else []
    rows = []
    for variant in variants:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_variant(args, variant, setup, Path(tmp)))
        r = rows[-1]
        print(f"{variant}: interplab {r['ours']['seconds']:.1f} s, FVU {r['ours']['fvu']:.4f}"
              + (f"; SAELens {r['theirs']['seconds']:.1f} s, FVU {r['theirs']['fvu']:.4f}" if "theirs" in r else "")
              + f"; load {r['load']:.1f}", flush=True)
    if peaks:
        peaks.append(matmul_peak(args.threads))
    report(args, rows, peaks)


if __name__ == "__main__":
    main()
