"""The loss-explained experiment: a tiny end-to-end run, its registration, and its planted controls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from interplab.experiments import EXPERIMENTS, run_experiment
from interplab.experiments.base import build_config
from interplab.experiments import loss_explained, loss_explained_controls
from interplab.experiments.loss_explained import LossExplainedExperiment
from interplab.experiments.loss_explained_controls import CONTROLS, controls
from interplab.verdicts import decide, exact, get

TINY: dict[str, Any] = {
    "subjects": ["tms", "planted", "ladder"],
    "tms": {"n_features": 24, "n_hidden": 12, "density": [0.1], "steps": 200},
    "planted": {"n_features": 48, "d": 16, "mean_active": 3.0, "steps": 200, "batch_size": 128},
    "ladder": {"rungs": [{"d_model": d, "n_layers": 1} for d in (8, 12, 16, 24)], "context": 12,
               "tokens_per_param": 4},
    "sae_k": 4, "width_factor": 2, "sae_steps": 20, "sae_batch_size": 256, "sae_lr": 5e-3, "refits": 2,
    "toy_train_rows": 2048, "ladder_train_tokens": 2048, "rank_batches": 1, "score_batches": 2,
    "toy_batch_size": 256, "seq_batch_size": 4, "singles": 3, "singles_top": 1, "n_boot": 50, "controls": False,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, text_folder: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("loss-explained")
    ladder = {**TINY["ladder"], "text": str(text_folder), "max_chars": 10_000}  # a few KB: no stdlib extraction
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTERPLAB_CACHE", str(out / "cache"))
        run_experiment("loss-explained", {**TINY, "ladder": ladder}, out / "run")
    return out / "run", json.loads((out / "run" / "results.json").read_text())


def test_every_study_has_a_curve_per_method_and_the_ladder_its_compute(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    path, data = tiny_run
    metrics = data["metrics"]
    assert set(metrics) == {"tms/hidden", "planted/hidden", "ladder/resid_post.0", "ladder/mlp_hidden.0"}
    for key, m in metrics.items():
        methods = set(m["methods"])
        assert {"pca", "pca-topk", "random", "sae-topk#0", "sae-topk#1"} <= methods
        assert ("truth" in methods) == (not key.startswith("ladder"))
        assert ("identity" in methods) == key.endswith("mlp_hidden.0")
        for s in m["methods"].values():
            assert len(s["frac_mean"]) == len(s["ns"]) == len(s["frac_mean_ci"]) and s["ns"][-1] == s["width"]
    ladder = metrics["ladder/resid_post.0"]
    assert len(ladder["ladder"]["points"]) == 4 and set(ladder["compute"]) == set(ladder["methods"])
    assert all(v is None or v <= 0 for c in ladder["compute"].values() for v in c["log10_fraction"])  # clamped
    assert {"curves", "shares", "compute"} <= set(data["figures"])
    assert (path / "index.html").is_file() and data["tables"]["curves"]["rows"]


def test_verdicts_without_controls_are_uncalibrated_and_the_truth_check_is_exact(
        tiny_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = tiny_run
    by_crux: dict[str, list[dict[str, Any]]] = {}
    for v in data["verdicts"]:
        by_crux.setdefault(v["crux"], []).append(v)
    assert set(by_crux) == {"lx-sae-pca-8", "lx-sae-pca-64", "lx-share", "lx-compute-64", "lx-compute-full",
                            "lx-truth"}
    assert all(v["status"] == "uncalibrated" for c, vs in by_crux.items() if c != "lx-truth" for v in vs)
    assert [v["subject"] for v in by_crux["lx-truth"]] == ["tms/hidden", "planted/hidden"]
    assert all(v["status"] == "harness check" and v["statistic"] == pytest.approx(1.0, abs=1e-4)
               for v in by_crux["lx-truth"])
    # n = 8 needs more than 8 dimensions, n = 64 more than 64: only the ladder's MLP (4 x 24 = 96) has that
    assert {v["subject"] for v in by_crux["lx-sae-pca-8"]} == {"tms/hidden", "planted/hidden", "ladder/mlp_hidden.0",
                                                               "ladder/resid_post.0"}
    assert [v["subject"] for v in by_crux["lx-sae-pca-64"]] == ["ladder/mlp_hidden.0"]
    assert {v["subject"] for v in by_crux["lx-compute-full"]} == {
        f"ladder/{s} · {m}" for s in ("resid_post.0", "mlp_hidden.0") for m in ("SAE", "PCA top-k")}


def test_registered_with_a_small_scale_and_its_cruxes() -> None:
    assert EXPERIMENTS.get("loss-explained") is LossExplainedExperiment
    cfg = build_config("loss-explained", LossExplainedExperiment.small)
    assert cfg.refits >= 3 and "lm" not in cfg.subjects and cfg.ladder == {"preset": "small"}
    for crux in list(CONTROLS) + ["lx-truth"]:
        c = get(crux)
        assert c.experiment == "loss-explained" and c.min_scale == "small"
    assert get("lx-truth").kind == "harness"


def test_each_method_of_a_compute_crux_is_judged_on_controls_read_with_that_method(
        tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PCA rows of lx-compute-* take controls whose statistic is PCA's (here: its positive
    control fails, so they are uncalibrated while the SAE rows count), never the SAE's; a PCA
    control undefined on its toy leaves the PCA row uncalibrated too."""
    read: list[tuple[str, str, str]] = []
    on_toy = {("sae", "flat"): -3.0, ("sae", "few"): 0.0, ("pca", "flat"): -1.0, ("pca", "few"): 0.0}

    def toy_compute(toy: str, which: str, method: str, _cfg: Any) -> Any:
        read.append((toy, which, method))
        if method == "pca" and which == "full" and toy == "few":
            return None  # undefined on that toy
        return exact(on_toy[method, toy], -2.0)

    monkeypatch.setattr(loss_explained_controls, "toy_result", lambda name, _cfg: name)
    monkeypatch.setattr(loss_explained_controls, "compute_evidence", toy_compute)
    for name in ("sae_pca_evidence", "share_evidence", "truth_evidence"):
        monkeypatch.setattr(loss_explained, name, lambda *_a: None)
    monkeypatch.setattr(loss_explained, "compute_evidence",
                        lambda _r, _which, _method, _cfg: exact(-2.5, -2.0, extra={"where": [0]}))
    cfg = build_config("loss-explained", LossExplainedExperiment.small)
    result = loss_explained.StudyResult("ladder/resid_post.0", 64, {}, [], None, {})
    verdicts = loss_explained.verdicts_for(result, cfg, "small", loss_explained._Controls(cfg))
    got = {(v.crux, v.subject.rsplit(" · ", 1)[1]): v for v in verdicts}
    assert set(got) == {("lx-compute-64", "SAE"), ("lx-compute-64", "PCA"), ("lx-compute-full", "SAE"),
                        ("lx-compute-full", "PCA top-k")}
    for crux in ("lx-compute-64", "lx-compute-full"):
        assert got[crux, "SAE"].status == "counted"
        assert got[crux, "SAE"].controls["positive"]["statistic"] == -3.0
    assert got["lx-compute-64", "PCA"].controls["positive"]["statistic"] == -1.0
    assert got["lx-compute-64", "PCA"].status == "uncalibrated"
    assert got["lx-compute-full", "PCA top-k"].controls["negative"]["verdict"] == "not run"
    assert got["lx-compute-full", "PCA top-k"].status == "uncalibrated"
    assert sorted(set(read)) == sorted({(t, w, m) for t in ("flat", "few") for w in ("n64", "full")
                                        for m in ("sae", "pca")})


@pytest.mark.slow
@pytest.mark.parametrize("crux", list(CONTROLS))
def test_planted_controls_read_as_constructed(crux: str, quiet_single_thread: None, tmp_cache: Path) -> None:
    """At the cruxes scale: each positive control reads supported, each negative does not."""
    cfg = build_config("loss-explained", LossExplainedExperiment.small)
    positive, negative = controls(crux, cfg)
    higher = get(crux).higher_is_support
    assert decide(positive.ci, positive.null, higher) == "supported", positive
    assert decide(negative.ci, negative.null, higher) != "supported", negative
