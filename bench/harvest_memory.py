"""Peak memory while harvesting more than 1 GB of SmolLM2 activations (target: peak RSS < 2.5 GB).

Runs the harvest in this process (model included) and reports peak RSS from getrusage, the bytes
written, and the bytes-written / peak-RSS ratio; then streams the store back with the shuffled reader
and reports the peak again.

    .venv/bin/python bench/harvest_memory.py [--tokens 131072] [--out DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from interplab import ui
from interplab.store import ActivationStore, HarvestConfig, harvest
from interplab.subjects import load_subject

SITES = ["resid_post.6", "mlp_hidden.6"]  # 576 + 1536 floats per token


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ui.set_quiet(True)
    out = args.out or Path(tempfile.mkdtemp(prefix="interplab-harvest-"))
    subject = load_subject("smollm2", seq_len=128)
    after_load = peak_rss_gb()
    cfg = HarvestConfig(subject="smollm2", sites=SITES, tokens=args.tokens, batch_size=16, shard_tokens=16384)
    t = time.perf_counter()
    harvest(subject, cfg, out)
    seconds = time.perf_counter() - t
    written = sum(f.stat().st_size for f in out.glob("shard_*.safetensors")) / 1024**3
    peak = peak_rss_gb()
    print(f"model loaded: peak RSS {after_load:.2f} GB")
    print(f"harvested {args.tokens} tokens x {SITES}: {written:.2f} GB in {seconds:.0f} s "
          f"({args.tokens / seconds:.0f} tokens/s)")
    print(f"peak RSS during harvest: {peak:.2f} GB   (target < 2.5 GB; activations/peak = {written / peak:.2f})")
    store = ActivationStore(out)
    n = sum(b.shape[0] for b in store.batches("mlp_hidden.6", 4096, shuffle=True))
    print(f"streamed {n} shuffled rows back; peak RSS now {peak_rss_gb():.2f} GB")
    if args.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
