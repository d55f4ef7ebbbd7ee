"""Activation store: fixed shards, checksums, resume after SIGKILL, shuffled bounded streaming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interplab.errors import UserError
from interplab.hooks import activations
from interplab.store import ActivationStore, HarvestConfig, harvest
from interplab.subjects import load_subject


def _cfg(**kw) -> HarvestConfig:
    base = dict(subject="mlp", subject_config={"width": 8, "depth": 2}, sites=["hidden.1", "out"],
                tokens=100, batch_size=16, shard_tokens=32)
    return HarvestConfig(**{**base, **kw})


def _checksums(out: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]]


def test_harvest_writes_fixed_shards_that_hold_the_real_activations(tmp_path):
    subject = load_subject("mlp", width=8, depth=2)
    harvest(subject, _cfg(), tmp_path)
    store = ActivationStore(tmp_path)
    assert [s["rows"] for s in store.manifest["shards"]] == [32, 32, 32, 4]
    assert store.rows == 100 and store.shape("hidden.1") == (8,)
    expected = []
    for b in range(7):  # 7 batches of 16 cover 100 rows; batch b uses seed (0, b)
        x = subject.sample(16, torch.Generator().manual_seed(b))
        expected.append(activations(subject.model, x, ["hidden.1"], sites=subject.sites)["hidden.1"])
    torch.testing.assert_close(store.all("hidden.1"), torch.cat(expected)[:100])


def test_rerun_is_a_no_op_and_settings_mismatch_is_refused(tmp_path):
    subject = load_subject("mlp", width=8, depth=2)
    harvest(subject, _cfg(), tmp_path)
    before = _checksums(tmp_path)
    harvest(subject, _cfg(), tmp_path)
    assert _checksums(tmp_path) == before
    with pytest.raises(UserError, match="different settings"):
        harvest(subject, _cfg(seed=1), tmp_path)


def test_growing_tokens_extends_and_matches_a_fresh_run(tmp_path):
    subject = load_subject("mlp", width=8, depth=2)
    harvest(subject, _cfg(tokens=50), tmp_path / "a")
    harvest(subject, _cfg(tokens=100), tmp_path / "a")
    harvest(subject, _cfg(tokens=100), tmp_path / "b")
    assert _checksums(tmp_path / "a") == _checksums(tmp_path / "b")


def test_missing_or_damaged_shard_is_regenerated_identically(tmp_path):
    subject = load_subject("mlp", width=8, depth=2)
    harvest(subject, _cfg(), tmp_path)
    before = _checksums(tmp_path)
    (tmp_path / "shard_00001.safetensors").unlink()
    with open(tmp_path / "shard_00002.safetensors", "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")
    harvest(subject, _cfg(), tmp_path)
    assert _checksums(tmp_path) == before


def test_corrupted_shard_is_reported_with_the_fix(tmp_path):
    harvest(load_subject("mlp", width=8, depth=2), _cfg(), tmp_path)
    with open(tmp_path / "shard_00000.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\xff")
    store = ActivationStore(tmp_path)
    with pytest.raises(UserError, match="corrupted.*rerun"):
        store.shard(0, "out")


def test_shuffled_batches_cover_every_row_once(tmp_path):
    harvest(load_subject("mlp", width=8, depth=2), _cfg(), tmp_path)
    store = ActivationStore(tmp_path)
    rows = store.all("out")
    batches = list(store.batches("out", 10, shuffle=True, seed=3, buffer_shards=2))
    assert all(b.shape == (10, 8) for b in batches[:-1])
    got = torch.cat(batches)
    assert not torch.equal(got, rows)  # actually shuffled
    key = lambda t: t[torch.argsort(t[:, 0] * 1e3 + t[:, 1])]  # noqa: E731
    torch.testing.assert_close(key(got), key(rows))
    again = torch.cat(list(store.batches("out", 10, shuffle=True, seed=3, buffer_shards=2)))
    assert torch.equal(got, again)


def test_reader_refuses_incomplete_and_unknown_sites(tmp_path):
    with pytest.raises(UserError, match="not an activation store"):
        ActivationStore(tmp_path)
    harvest(load_subject("mlp", width=8, depth=2), _cfg(), tmp_path)
    with pytest.raises(UserError, match="was not harvested"):
        ActivationStore(tmp_path).shard(0, "hidden.0")


def _harvest_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "interplab.cli", "harvest", "tiny-llama", "--site", "resid_post.0",
            "--site", "mlp_hidden.1", "--tokens", "24000", "--out", str(out), "--batch-size", "4",
            "--shard-tokens", "1000", "--quiet"]


def test_harvest_killed_with_sigkill_resumes_to_identical_shards(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_harvest_cmd(ref), check=True, capture_output=True)
    for target in (2, 9):  # kill at two different points, then let it finish
        proc = subprocess.Popen(_harvest_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(list(killed.glob("shard_*.safetensors"))) < target and time.time() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"], "the harvest finished before it could be killed; make it longer"
    subprocess.run(_harvest_cmd(killed), check=True, capture_output=True)
    assert _checksums(killed) == _checksums(ref)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in ref.iterdir())
