"""Run by tests/test_distributed.py under torchrun (or alone): train SAEs on a saved tensor and, on
rank 0, save each one's weights. argv: data.safetensors out_prefix names steps [checkpoint_dir or -]
[stop_after]; names are comma-separated, NAME+free for decoder_norm='free' with grad_clip, NAME+ref
for the autograd ReferenceStep (fast=False: the step every architecture takes off the CPU)."""

import sys

import torch
from safetensors.torch import load_file, save_file

from interplab import ui
from interplab.decompose import create
from interplab.parallel import World
from interplab.decompose.train import train_sae

data, out, names, steps = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
ckpt = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
stop = int(sys.argv[6]) if len(sys.argv) > 6 else None
torch.set_num_threads(1)
ui.set_quiet(True)
world = World.from_env("cpu")
x = load_file(data)["x"]
for spec in names:  # "sae-topk+free": SAELens's free decoder norm and gradient clipping; "+ref": autograd
    name, *flags = spec.split("+")
    extra = {"decoder_norm": "free", "grad_clip": 0.05} if "free" in flags else {}
    extra |= {"fast": False} if "ref" in flags else {}
    sae = create(name, k=4, width=64, steps=steps, batch_size=256, seed=3)
    train_sae(sae, x, {"checkpoint_every": 5, **extra}, ckpt, stop_after=stop)
    if world.main and stop is None:
        save_file({k: v.detach().contiguous() for k, v in sae.codec_.state_dict().items()}, f"{out}.{spec}")
world.close()
