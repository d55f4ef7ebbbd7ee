"""Data-parallel SAE training with torch.distributed (gloo, 2 CPU processes) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).parent / "helpers" / "ddp_train.py"


def _planted(n: int = 2048, m: int = 48, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)  # (m, d)
    on = torch.rand(n, m, generator=g) < 4 / m  # (n, m)
    return (torch.rand(n, m, generator=g) * on) @ feats + 0.3  # (n, d)


def _run(args: list[str], procs: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if procs == 1:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_port", str(29500 + os.getpid() % 1000), str(SCRIPT), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "x.safetensors"
    save_file({"x": _planted()}, str(path))
    return path


NAMES = ["sae-topk", "sae-batchtopk", "sae-jumprelu", "sae-relu", "sae-topk+free", "sae-batchtopk+free",
         "sae-jumprelu+free", "sae-batchtopk+ref"]


@pytest.fixture(scope="module")
def two_ranks(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every architecture trained 20 steps by 2 ranks (one torchrun launch for all)."""
    out = tmp_path_factory.mktemp("two") / "w"
    _run([str(data), str(out), ",".join(NAMES), "20"], 2)
    return out


def test_two_ranks_train_what_one_process_trains(data: Path, tmp_path: Path, two_ranks: Path) -> None:
    """Same global batches and seed: the 2-rank weights equal the 1-process weights to float32 rounding
    (the ranks sum in another order), for every architecture's fast step, with SAELens's free
    decoder norm and gradient clipping (TrainConfig.decoder_norm, grad_clip), and for BatchTopK on
    the autograd step (the one off the CPU), whose cut is over the whole batch as the fast step's."""
    _run([str(data), str(tmp_path / "w"), ",".join(NAMES), "20"], 1)
    for name in NAMES:
        one, two = load_file(f"{tmp_path / 'w'}.{name}"), load_file(f"{two_ranks}.{name}")
        for key in one:
            gap = (one[key] - two[key]).abs().max()
            assert torch.allclose(one[key], two[key], rtol=1e-4, atol=1e-5), (name, key, gap)


def test_a_killed_two_rank_run_resumes(data: Path, tmp_path: Path, two_ranks: Path) -> None:
    """Stopped after 12 steps (checkpoint at 10, written by rank 0 alone), rerun: it ends bit for bit
    where the uninterrupted 2-rank run ends."""
    ckpt = tmp_path / "ckpt"
    _run([str(data), str(tmp_path / "unused"), "sae-topk", "20", str(ckpt), "12"], 2)
    assert sorted(p.name for p in ckpt.glob("step_*.json")) == ["step_000000010.json"]
    _run([str(data), str(tmp_path / "w"), "sae-topk", "20", str(ckpt)], 2)
    a, b = load_file(f"{tmp_path / 'w'}.sae-topk"), load_file(f"{two_ranks}.sae-topk")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_ranks_harvest_the_shards_one_process_harvests(tmp_path: Path) -> None:
    """Each rank writes a range of shards, rank 0 the manifest: the store equals a 1-process one byte for byte."""
    import json

    from interplab.store import ActivationStore

    harvest = Path(__file__).parent / "helpers" / "ddp_harvest.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for procs, name in ((1, "one"), (2, "two")):
        cmd = ([sys.executable, str(harvest)] if procs == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(29600 + os.getpid() % 1000), str(harvest)])
        done = subprocess.run([*cmd, str(tmp_path / name), "2500", "300"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("one", "two"))
    assert two["complete"] and len(two["shards"]) == 9
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    assert sorted(p.name for p in (tmp_path / "two").glob("part-*.json")) == ["part-000-of-002.json",
                                                                              "part-001-of-002.json"]
    assert torch.equal(ActivationStore(tmp_path / "one").all("hidden"), ActivationStore(tmp_path / "two").all("hidden"))
