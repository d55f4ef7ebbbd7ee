"""Run by tests/test_distributed.py under torchrun (or alone): harvest the planted `synthetic`
subject into a store. argv: out_folder tokens shard_tokens"""

import sys
from pathlib import Path

import torch

from interplab import ui
from interplab.parallel import World
from interplab.store import HarvestConfig, harvest
from interplab.subjects import load_subject

out, tokens, shard = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
ui.set_quiet(True)
world = World.from_env("cpu")
subject = load_subject("synthetic", n_features=32, d=8)
cfg = HarvestConfig(subject="synthetic", subject_config={"n_features": 32, "d": 8}, sites=["hidden"], tokens=tokens,
                    batch_size=100, shard_tokens=shard, seed=1)
harvest(subject, cfg, out)
world.close()
