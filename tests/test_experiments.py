"""Experiments: verdict logic, bootstrap CIs, results.json on disk, superposition-intro, cruxes resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from matplotlib.figure import Figure

from interplab.config import Config
from interplab.errors import UserError
from interplab.experiments import (
    EXPERIMENTS,
    Experiment,
    Result,
    Verdict,
    bootstrap_ci,
    decide,
    load_result,
    run_cruxes,
    run_experiment,
    write_result,
)

DESIGN_KEYS = {"experiment", "interplab_version", "config", "seed", "seconds", "metrics", "verdicts", "tables"}


@pytest.mark.parametrize(
    ("ci", "null", "higher", "expected"),
    [
        ((0.5, 2.0), 0.0, True, "supported"),
        ((-2.0, -0.5), 0.0, True, "not supported"),
        ((-0.5, 2.0), 0.0, True, "inconclusive"),
        ((0.0, 2.0), 0.0, True, "inconclusive"),  # touching the null does not exclude it
        ((0.5, 2.0), 0.0, False, "not supported"),
        ((-2.0, -0.5), 0.0, False, "supported"),
        ((3.0, 3.0), 2.0, True, "supported"),  # degenerate CI, clear of the null
        ((math.nan, 1.0), 0.0, True, "inconclusive"),
    ],
)
def test_decide(ci: tuple[float, float], null: float, higher: bool, expected: str) -> None:
    assert decide(ci, null, higher_is_support=higher) == expected


def test_bootstrap_ci_contains_mean_and_is_deterministic() -> None:
    x = np.random.default_rng(1).normal(3.0, 1.0, size=200)
    ci = bootstrap_ci(x, seed=7)
    assert ci.low < x.mean() < ci.high
    assert ci.high - ci.low < 0.5  # about 4 standard errors of 1/sqrt(200)
    assert bootstrap_ci(x, seed=7) == ci
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    med = bootstrap_ci(x, stat=lambda v: float(np.median(v)), n_boot=300)  # no axis keyword: per resample
    assert med.low < np.median(x) < med.high


class _TinyConfig(Config):
    seed: int = 0
    """Seed."""
    size: int = 3
    """How many points."""


class Tiny(Experiment):
    """A fast stand-in experiment for the cruxes runner; counts its runs."""

    name = "tiny-test"
    title = "Tiny test experiment"
    Config = _TinyConfig
    small: ClassVar[dict[str, Any]] = {"size": 4}
    runs = 0

    def run(self, cfg: _TinyConfig) -> Result:
        type(self).runs += 1
        v = Verdict("tiny claim", 1.0, (0.5, 1.5), 0.0, decide((0.5, 1.5), 0.0), subject="none")
        return Result(self.name, self.title, metrics={"size": cfg.size, "x": {"nan": float("nan")}},
                      verdicts=[v], tables={"t": {"columns": ["a"], "rows": [[1]]}})


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> type[Tiny]:
    monkeypatch.setitem(EXPERIMENTS._entries, Tiny.name, Tiny)
    monkeypatch.setitem(EXPERIMENTS._help, Tiny.name, Tiny.title)
    monkeypatch.setattr(Tiny, "runs", 0)
    return Tiny


def test_results_json_round_trip(tmp_path: Path, tiny: type[Tiny]) -> None:
    result = run_experiment(tiny.name, {"size": 5}, tmp_path)
    data = load_result(tmp_path)
    assert data is not None and DESIGN_KEYS <= set(data)
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["config"] == {"seed": 0, "size": 5} and data["experiment"] == "tiny-test"
    assert data["metrics"]["size"] == 5.0 and isinstance(data["metrics"]["size"], float)
    assert data["metrics"]["x"]["nan"] is None  # NaN is not JSON
    (v,) = data["verdicts"]
    assert {"crux", "statistic", "ci", "null", "verdict", "subject"} <= set(v) and v["ci"] == [0.5, 1.5]
    assert data["seconds"] >= 0 and (tmp_path / "index.html").is_file()


def test_config_errors_are_user_errors(tmp_path: Path, tiny: type[Tiny]) -> None:
    with pytest.raises(UserError, match="unknown config key 'sise'"):
        run_experiment(tiny.name, {"sise": 5}, tmp_path)
    with pytest.raises(UserError, match="unknown experiment"):
        run_experiment("no-such-experiment", {}, tmp_path)
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("size = 9\n")
    assert run_experiment(tiny.name, {"seed": 2}, tmp_path / "f", config_file=cfg_file).config == {"seed": 2, "size": 9}


def test_interrupted_write_keeps_previous_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig = Figure()
    fig.subplots().plot([0, 1])
    write_result(Result("demo", metrics={"v": 1}, figures={"f": fig}), tmp_path)
    before = (tmp_path / "results.json").read_text()
    real_replace = os.replace

    def interrupted(src: str, dst: str) -> None:
        if str(dst).endswith("results.json"):
            raise KeyboardInterrupt  # the run is stopped just before results.json is swapped in
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_result(Result("demo", metrics={"v": 2}), tmp_path)
    assert (tmp_path / "results.json").read_text() == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temp file left behind
    with pytest.raises(KeyboardInterrupt):
        write_result(Result("demo"), tmp_path / "fresh")
    assert load_result(tmp_path / "fresh") is None  # an unfinished run never looks finished


def test_load_result_ignores_damaged_file(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"experiment": "x", "metr')
    assert load_result(tmp_path) is None and load_result(tmp_path / "missing") is None


def test_run_cruxes_resumes(tmp_path: Path, tiny: type[Tiny], monkeypatch: pytest.MonkeyPatch) -> None:
    index = run_cruxes(tmp_path, only=[tiny.name])
    assert tiny.runs == 1 and index == tmp_path / "index.html"
    assert load_result(tmp_path / tiny.name)["config"] == {"seed": 0, "size": 4}  # its small scale
    run_cruxes(tmp_path, only=[tiny.name])
    assert tiny.runs == 1  # same config on disk: reused, not rerun
    doc = json.loads((tmp_path / "cruxes.json").read_text())
    assert doc["experiments"][0]["reused"] is True
    assert doc["verdicts"][0]["experiment"] == tiny.name and doc["verdicts"][0]["verdict"] == "supported"
    assert f'href="{tiny.name}/index.html"' in index.read_text()
    run_cruxes(tmp_path, fresh=True, only=[tiny.name])
    assert tiny.runs == 2
    monkeypatch.setattr(Tiny, "small", {"size": 6})  # a different config is not a finished run of it
    run_cruxes(tmp_path, only=[tiny.name])
    assert tiny.runs == 3
    with pytest.raises(UserError, match="unknown experiment"):
        run_cruxes(tmp_path, only=["no-such-experiment"])


def test_every_experiment_has_a_valid_small_config() -> None:
    for name in EXPERIMENTS:
        cls = EXPERIMENTS.get(name)
        assert cls.name == name and cls.title
        cfg = cls.Config.model_validate(cls.small)
        assert hasattr(cfg, "seed")


def test_superposition_intro_tiny_end_to_end(tmp_path: Path, tmp_cache: Path) -> None:
    over = {"steps": 20, "n_densities": 3, "seeds": 2, "batch_size": 64, "eval_samples": 256}
    result = run_experiment("superposition-intro", over, tmp_path)
    data = load_result(tmp_path)
    assert data is not None and DESIGN_KEYS <= set(data)
    assert set(data["figures"]) == {"geometry", "features_vs_density"}
    for rel in data["figures"].values():
        assert (tmp_path / rel).read_bytes()[:4] == b"\x89PNG"
    assert len(data["tables"]["per_density"]["rows"]) == 3
    assert len(data["metrics"]["by_density"]) == 3
    (v,) = data["verdicts"]
    assert v["verdict"] in ("supported", "not supported", "inconclusive") and v["null"] == 0.0
    assert v["ci"][0] <= v["statistic"] <= v["ci"][1]
    assert "superposition-intro" in (tmp_path / "index.html").read_text()
    assert result.seconds > 0


def test_superposition_intro_small_scale_shows_superposition(tmp_path: Path, tmp_cache: Path) -> None:
    """The paper's finding at `cruxes` scale: the sparsest density holds more features than m."""
    small = EXPERIMENTS.get("superposition-intro").small
    run_experiment("superposition-intro", small, tmp_path)
    data = load_result(tmp_path)
    by = data["metrics"]["by_density"]
    densest, sparsest = by["1"], by["0.05"]
    assert sparsest["features_represented"] > densest["features_represented"]
    assert densest["features_represented"] <= 2 < sparsest["features_represented"]
    assert sparsest["dims_per_feature"] < 0.5 < densest["dims_per_feature"]
    assert data["verdicts"][0]["verdict"] == "supported"
