"""`interplab train-sae` on a tiny store: alone, under torchrun with 2 processes (also harvesting
there), and bad input (one line, exit code 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import interplab.decompose as D

RUN = "import sys; from interplab.cli import main; sys.argv = ['interplab', *sys.argv[1:]]; main()"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
TRAIN = ("--site", "hidden.1", "--set", "k=4", "--set", "width=32", "--set", "steps=20", "--set", "batch_size=64",
         "--set", "threads=1")


def cli(*args: str, procs: int = 1) -> subprocess.CompletedProcess:
    """`interplab ARGS` in a fresh interpreter, or in `procs` processes under torchrun."""
    if procs == 1:
        cmd = [sys.executable, "-c", RUN, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_port", str(29700 + os.getpid() % 1000), "-m", "interplab.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "acts"
    r = cli("harvest", "mlp", "--site", "hidden.1", "--site", "out", "--tokens", "1000", "--shard-tokens", "128",
            "--set", "width=16", "--set", "depth=2", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_train_sae_saves_a_saelens_folder_that_loads(store: Path, tmp_path: Path) -> None:
    r = cli("train-sae", str(store), *TRAIN, "--set", "decay=0.5", "--out", str(tmp_path / "sae"),
            "--checkpoint", str(tmp_path / "ckpt"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"saved: {tmp_path / 'sae'}"
    sae = D.load(tmp_path / "sae")
    assert sae.name == "sae-topk" and sae.settings.k == 4 and sae.n_components_ == 32
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["metadata"]["hook_name"] == "hidden.1"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000000020.json", "step_000000020.safetensors"]
    from interplab.store import ActivationStore

    x = ActivationStore(store).all("hidden.1")
    assert float(sae.forward(x).fvu) < 0.9


def test_train_sae_under_torchrun_matches_one_process(store: Path, tmp_path: Path) -> None:
    """2 ranks harvest a store (each a range of shards) and train on it: the weights equal one
    process's to float32 rounding, and rank 0 alone saves and prints."""
    two_store = tmp_path / "acts2"
    r = cli("harvest", "mlp", "--site", "hidden.1", "--site", "out", "--tokens", "1000", "--shard-tokens", "128",
            "--set", "width=16", "--set", "depth=2", "--out", str(two_store), "--quiet", procs=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("harvest complete") == 1
    assert [s["sha256"] for s in json.loads((two_store / "manifest.json").read_text())["shards"]] == \
        [s["sha256"] for s in json.loads((store / "manifest.json").read_text())["shards"]]
    r = cli("train-sae", str(two_store), *TRAIN, "--sae", "sae-batchtopk", "--out", str(tmp_path / "two"), "--quiet",
            procs=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("saved:") == 1
    assert cli("train-sae", str(store), *TRAIN, "--sae", "sae-batchtopk", "--out", str(tmp_path / "one"),
               "--quiet").returncode == 0
    one, two = D.load(tmp_path / "one").codec_, D.load(tmp_path / "two").codec_
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.allclose(getattr(one, name), getattr(two, name), rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize(("args", "needles"), [
    (("--set", "wdth=8"), ("unknown setting 'wdth'", "width")),
    (("--site", "hiden.1"), ("site 'hiden.1' was not harvested", "hidden.1")),
    (("--sae", "pca"), ("'pca' is not an SAE", "sae-topk")),
    (("--set", "k=0"), ("'k'",)),
])
def test_bad_input_is_one_line_and_exit_2(store: Path, tmp_path: Path, args: tuple[str, ...],
                                          needles: tuple[str, ...]) -> None:
    base = {"--site": "hidden.1"}
    pairs = dict(zip(args[::2], args[1::2]))
    full = [*(x for k, v in {**base, **{k: v for k, v in pairs.items() if k != "--set"}}.items() for x in (k, v)),
            *(("--set", pairs["--set"]) if "--set" in pairs else ())]
    r = cli("train-sae", str(store), *full, "--out", str(tmp_path / "sae"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_folder_that_is_not_a_store_is_one_line(tmp_path: Path) -> None:
    r = cli("train-sae", str(tmp_path), "--out", str(tmp_path / "sae"))
    assert r.returncode == 2 and "not an activation store" in r.stderr and "Traceback" not in r.stderr
