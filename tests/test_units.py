"""Units of work: a rerun reads finished units back, stale ones (other code or config) are recomputed,
and a run killed midway leaves only whole units."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from interplab.decompose import create
from interplab.experiments.units import Units


def test_json_units_are_computed_once(tmp_path: Path) -> None:
    calls = []
    units = Units(tmp_path, {"experiment": "x", "config": {"a": 1}})
    for _ in range(2):
        assert units.json({"i": 3}, lambda: calls.append(1) or {"fvu": 0.25, "l": [1, 2]}) == {"fvu": 0.25, "l": [1, 2]}
    assert len(calls) == 1 and units.reused == 1
    other = Units(tmp_path, {"experiment": "x", "config": {"a": 2}})  # another config: not reused
    other.json({"i": 3}, lambda: calls.append(1) or {})
    assert len(calls) == 2


def test_stale_code_is_recomputed(tmp_path: Path, monkeypatch) -> None:
    Units(tmp_path).json({"i": 1}, lambda: 1)
    monkeypatch.setattr("interplab.experiments.units.code_hash", lambda: "edited")
    again = Units(tmp_path)
    assert again.json({"i": 1}, lambda: 2) == 2 and again.computed == 1


def test_tensor_and_decomposer_units_round_trip(tmp_path: Path) -> None:
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    units = Units(tmp_path)
    t = units.tensors({"t": 1}, lambda: {"w": torch.arange(6.0).view(2, 3)})
    assert torch.equal(Units(tmp_path).tensors({"t": 1}, lambda: {}) ["w"], t["w"])
    pca = units.decomposer({"m": "pca"}, lambda: create("pca", k=3).fit(x))
    back = Units(tmp_path).decomposer({"m": "pca"}, lambda: (_ for _ in ()).throw(AssertionError("refit")))
    assert torch.allclose(back.transform(x), pca.transform(x), atol=1e-6)


def test_no_folder_stores_nothing() -> None:
    units = Units(None)
    assert units.json({"i": 1}, lambda: 5) == 5 and units.json({"i": 1}, lambda: 6) == 6


SCRIPT = """
import sys, time
from interplab.experiments.units import Units
units = Units(sys.argv[1])
for i in range(100):
    units.json({"i": i}, lambda: (time.sleep(0.05), i * i)[1])
"""


def test_a_killed_run_leaves_whole_units_and_resumes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env)
    deadline = time.time() + 60
    while len([p for p in tmp_path.glob("json-*") if not p.name.endswith(".tmp")]) < 5 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [p for p in tmp_path.glob("json-*") if (p / "unit.json").is_file()]
    assert 5 <= len(done) < 100
    units = Units(tmp_path)
    assert [units.json({"i": i}, lambda i=i: i * i) for i in range(100)] == [i * i for i in range(100)]
    assert units.reused == len(done) and units.computed == 100 - len(done)
