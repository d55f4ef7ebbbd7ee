"""The same TopK SAE trained by interplab and by EleutherAI sparsify's SparseCoder, interleaved.

TopK SAE, d_in 576 (SmolLM2-135M resid_post.6), width 4608, k 32, batch 4096, 300 steps. Three
trainers start from one initialisation (interplab's `init_`, copied into sparsify's SparseCoder as
encoder.weight = W_enc^T, encoder.bias = b_enc, W_dec, b_dec) and see the same scaled batches in the
same order (sae_common.py):

- interplab: `train_sae` with its TrainConfig defaults, the given learning rate, linear decay over
  the last 20% of steps, AuxK 1/32.
- sparsify + Adam: its SparseCoder's own forward and backward (its fused encoder, the eager
  `embedding_bag` decoder that it uses without Triton, its AuxK and FVU), driven by the optimizer
  interplab uses: torch Adam with the same betas, epsilon, learning rate and schedule, AuxK 1/32 on
  latents dead by the same token count, and sparsify's unit-norm decoder (rows renormalised before
  each forward, the gradient along each row removed), as its trainer does.
- sparsify default: the same SparseCoder under its trainer's default optimizer, SignSGD wrapped in
  schedule-free averaging (momentum 0.95) at its default rate 5e-3 / sqrt(width / 2^14), no AuxK
  (auxk_alpha defaults to 0), evaluated at the averaged weights as its trainer saves them.
  sparsify's `Trainer` itself reads activations from a Hugging Face model through hooks, so its
  training step is reproduced here on the shared batches, not called.

The trainers alternate in blocks of `--block` steps (paced.py), so all three see the same load;
each one's steps/s counts its own blocks. sparsify's folders (`save_to_disk`) are read back by
`interplab.decompose.sparsify.load_sparsify` and scored as interplab's SAE is (held-out FVU in
float64, L0). Targets: interplab >= 1.0x sparsify + Adam's steps/s (stretch 1.5x), FVU within 0.01.

    make bench-peers
    .venv/bin/python bench/sae_train_vs_sparsify.py --threads 1 [--quick] [--lr 8e-4]
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
from sae_common import (D_IN, PEERS_PYTHON, Setup, add_common_args, load_average, machine, prepare, scores,
                        train_interleaved)


# --- sparsify side (runs inside .bench-peers; imports nothing from interplab) -----------------------
def sparsify_side() -> None:
    from safetensors.torch import load_file
    from sparsify import SparseCoder, SparseCoderConfig

    pacer = PeerPacer.from_argv()
    p = pacer.job()
    torch.set_num_threads(p["threads"])
    t = load_file(str(pacer.folder / "inputs.safetensors"))
    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=p["width"], k=p["k"]), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        sae.encoder.weight.copy_(t["W_enc"].T)
        sae.encoder.bias.copy_(t["b_enc"])
        sae.W_dec.copy_(t["W_dec"])
        sae.b_dec.copy_(t["b_dec"])
    x, order, scale = t["x_train"], t["order"], p["scale"]
    adam = p["optimizer"] == "adam"
    if adam:
        opt = torch.optim.Adam(sae.parameters(), lr=p["lr"], betas=tuple(p["betas"]), eps=p["eps"])
    else:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": p["lr"]}]), momentum=0.95)
        opt.train()
    since = torch.zeros(p["width"], dtype=torch.long)  # tokens since each latent last fired

    def step(i: int) -> None:
        batch = x[order[i]] * scale  # (batch, d_in): the rows and scale interplab's stream used
        sae.set_decoder_norm_to_unit_norm()  # sparsify's trainer renormalises before each forward
        dead = since >= p["dead_tokens"] if p["aux"] > 0 else None
        out = sae(batch, dead_mask=dead if dead is not None and bool(dead.any()) else None)
        (out.fvu + p["aux"] * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        if adam:
            opt.param_groups[0]["lr"] = p["lr"] * p["lr_scale"][i]
        opt.step()
        opt.zero_grad()
        since.add_(batch.shape[0])
        since[out.latent_indices.flatten()] = 0

    sae.train()
    pacer.step_blocks(step, p["steps"])
    if not adam:
        opt.eval()  # schedule-free: the averaged weights, as sparsify's trainer saves them
    sae.set_decoder_norm_to_unit_norm()
    sae.save_to_disk(pacer.folder / "sae")
    pacer.done({"steps": p["steps"], "dead": int((since >= p["dead_tokens"]).sum())})


# --- interplab side ------------------------------------------------------------------------------------
def peer_job(args: argparse.Namespace, setup: Setup, cfg, optimizer: str, block: int) -> dict:
    from interplab.decompose.train import default_dead_tokens, lr_scale

    dead_tokens = cfg.dead_tokens or default_dead_tokens(setup.batch, setup.steps)
    job = {"optimizer": optimizer, "width": args.width, "k": args.k, "scale": setup.scale, "steps": setup.steps,
           "threads": args.threads, "block": block, "dead_tokens": dead_tokens}
    if optimizer == "adam":
        job |= {"lr": args.lr, "betas": [cfg.adam_beta1, cfg.adam_beta2], "eps": cfg.adam_eps,
                "aux": cfg.aux_coefficient,
                "lr_scale": [lr_scale(i, setup.steps, cfg.warmup, cfg.decay) for i in range(setup.steps)]}
    else:
        job |= {"lr": 5e-3 / math.sqrt(args.width / 2**14), "aux": 0.0}  # sparsify's defaults for signum
    return job


def run(args: argparse.Namespace, setup: Setup, root: Path) -> dict:
    from safetensors.torch import save_file

    from interplab.decompose.sae import TopKSAE
    from interplab.decompose.sparsify import load_sparsify
    from interplab.decompose.streams import generator
    from interplab.decompose.train import TrainConfig

    extra = {"decoder_norm": args.decoder_norm} if args.decoder_norm else {}
    cfg = TrainConfig(steps=setup.steps, batch_size=setup.batch, lr=args.lr, decay=0.2, seed=setup.seed,
                      threads=args.threads, aux_coefficient=1 / 32, **extra)
    sae = TopKSAE(D_IN, args.width, args.k)
    sae.init_(setup.mean * setup.scale, generator(setup.seed, -1))  # scaled units, as every trainer sees the data
    init = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    names = ["sparsify + Adam", *([] if args.skip_default else ["sparsify default (signum)"])]
    peers = []
    for name, optimizer in zip(names, ("adam", "signum")):
        folder = root / optimizer
        folder.mkdir()
        save_file({"x_train": setup.x, "order": setup.order, **init}, str(folder / "inputs.safetensors"))
        (folder / "job.json").write_text(json.dumps(peer_job(args, setup, cfg, optimizer, args.block)))
        peers.append(Peer(PEERS_PYTHON, __file__, folder, "--sparsify-side", folder / "sparsify.log"))
    sae.fold_scale_(setup.scale)  # train_sae takes weights that act on raw inputs, and unfolds them itself
    before = load_average()
    sae, seconds = train_interleaved(sae, cfg, setup, peers, args.block)
    rows = {"interplab": {"seconds": seconds, "steps": setup.steps, **scores(sae, setup.x_eval)}}
    for name, peer in zip(names, peers):
        out = peer.finish()
        back = load_sparsify(peer.folder / "sae")  # acts on scaled inputs
        rows[name] = out | scores(back.codec_, setup.x_eval * setup.scale)
    return {"rows": rows, "load": (before + load_average()) / 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap)
    ap.add_argument("--skip-default", action="store_true", help="leave out sparsify's default optimizer")
    ap.add_argument("--sparsify-side", action="store_true", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.sparsify_side:
        sparsify_side()
        return
    if args.quick:
        args.steps = 60
    if not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing; run `make bench-peers` first")
    torch.set_num_threads(args.threads)
    setup = prepare(args.steps, args.batch, args.seed, validation=False)
    print(f"{machine()}; torch {torch.__version__}, {args.threads} thread(s); TopK width {args.width}, k {args.k}; "
          f"{args.steps} steps of {args.batch}, lr {args.lr}; scored on {setup.x_eval.shape[0]} held-out tokens; "
          f"blocks of {args.block} steps; load average {load_average():.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, setup, Path(tmp))
    rows = result["rows"]
    ours = rows["interplab"]
    rate = ours["steps"] / ours["seconds"]
    print(f"\n{'trainer':28s} {'seconds':>8s} {'steps/s':>8s} {'interplab x':>11s} {'FVU':>7s} {'L0':>6s} {'silent':>6s}")
    for name, r in rows.items():
        theirs = r["steps"] / r["seconds"]
        print(f"{name:28s} {r['seconds']:8.1f} {theirs:8.3f} {rate / theirs:10.2f}x {r['fvu']:7.4f} {r['l0']:6.1f} "
              f"{r['silent']:6d}")
    adam = rows["sparsify + Adam"]
    print(f"load average during the run: {result['load']:.1f}")
    print(f"steps/s ratio interplab / sparsify + Adam: {rate / (adam['steps'] / adam['seconds']):.2f}x "
          f"(target >= 1.0x, stretch 1.5x); FVU difference {abs(ours['fvu'] - adam['fvu']):.4f} (target <= 0.01)")


if __name__ == "__main__":
    main()
