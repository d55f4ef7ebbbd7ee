"""The decompose experiment end to end at a tiny scale, its verdict helpers, and its CLI entry."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from interplab.errors import UserError
from interplab.experiments import EXPERIMENTS, run_experiment
from interplab.experiments.base import build_config
from interplab.experiments.decompose import OPTIONAL, REQUIRED
from interplab.experiments.decompose_verdicts import difference, pick_sae, verdicts_for

TINY: dict[str, Any] = {
    "methods": ["identity", "pca", "sae-topk"],
    "ks": [4, 8],
    "linear_sparsify": ["topk"],
    "synthetic": {"n_features": 48, "d": 16},
    "tms": {"n_features": 24, "n_hidden": 12, "density": [0.1], "steps": 100},
    "lm": "tiny-llama",
    "lm_config": {"seq_len": 16, "d_model": 32},
    "lm_layer": 1,
    "lm_sites": ["resid_post"],
    "toy_train_samples": 2048,
    "lm_train_tokens": 512,
    "sae_steps": 20,
    "sae_batch_size": 256,
    "sae_lr": 5e-3,
    "eval_batches": 2,
    "toy_eval_batch_size": 256,
    "lm_eval_windows": 4,
    "n_boot": 50,
}
VERDICT_KEYS = {"crux", "statistic", "ci", "null", "verdict"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, text_folder: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("decompose")
    lm_config = {**TINY["lm_config"], "text": str(text_folder)}  # a few KB of text: tokenised at once
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTERPLAB_CACHE", str(out / "cache"))  # TMS weights and the LM harvest stay private
        run_experiment("decompose", {**TINY, "lm_config": lm_config}, out / "run")
    return out / "run", json.loads((out / "run" / "results.json").read_text())


def test_results_hold_every_metric_for_every_site_method_and_k(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = tiny_run
    metrics = data["metrics"]
    assert set(metrics) == {"synthetic/hidden", "tms/hidden", "tiny-llama/resid_post.1"}
    for methods in metrics.values():
        assert set(methods) == {"identity", "pca", "sae-topk"}
        for entry in methods.values():
            for level in (entry, entry["k4"]):  # headline k = 8 on top, k = 4 below
                assert set(REQUIRED) <= set(level)
                assert level["fvu"] is not None and level["l0"] is not None and level["bits_per_token"] is not None
            assert entry["k"] == 8 and entry["k4"]["k"] == 4
            assert entry["l0"] <= 8 + 1e-6  # hard budget: every method here caps the codes per token
    synth, tms, lm = (metrics[k]["sae-topk"] for k in ("synthetic/hidden", "tms/hidden", "tiny-llama/resid_post.1"))
    assert synth["ce_score_zero"] is None and synth["kl_score"] is None  # no loss: undefined, kept as null
    assert {"mmcs", "mcc", "f1"} <= set(synth) and {"mmcs", "mcc", "f1"} <= set(tms)
    assert tms["delta_ce_nats"] is not None and tms["kl_score"] is None
    assert lm["kl_score"] is not None and lm["interp_score"] is not None
    assert set(OPTIONAL) >= {k for k in lm if k in OPTIONAL}


def test_verdicts_and_figures_exist(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    out, data = tiny_run
    verdicts = data["verdicts"]
    assert verdicts, "a verdict per site, budget and aspect"
    for v in verdicts:
        assert VERDICT_KEYS <= set(v)
        assert v["verdict"] in {"supported", "not supported", "inconclusive"}
        assert v["null"] == 0.0 and len(v["ci"]) == 2
    aspects = {(v["subject"], v["crux"].split("—")[-1].strip().split(":")[0]) for v in verdicts}
    assert ("tms/hidden @ k=8", "faithful") in aspects and ("synthetic/hidden @ k=4", "interpretable") in aspects
    assert not any("synthetic" in v["subject"] and "ΔCE" in v["crux"] for v in verdicts)  # no loss there
    for name in ("pareto_fvu", "pareto_delta_ce", "pareto_interp"):
        assert (out / data["figures"][name]).stat().st_size > 1000
    assert (out / "index.html").is_file()
    table = data["tables"]["methods"]
    assert len(table["rows"]) == 3 * 3 * 2 and len(table["rows"][0]) == len(table["columns"])


def _entry(value: float, ci: tuple[float, float], per_batch: list[float] | None = None, **kw: Any) -> dict[str, Any]:
    details = {"per_batch_fvu": per_batch} if per_batch else {}
    return {"fvu": value, "ci": {"fvu": list(ci)}, "details": details, **kw}


def test_difference_is_paired_when_per_batch_values_exist_else_conservative() -> None:
    a = _entry(0.5, (0.4, 0.6), [0.4, 0.5, 0.6, 0.5])
    b = _entry(0.3, (0.2, 0.4), [0.2, 0.3, 0.4, 0.3])  # same batch effects: the paired CI is a point
    stat, ci, how = difference(a, b, "fvu", 200, 0)
    assert stat == pytest.approx(0.2) and ci.low == pytest.approx(0.2) and ci.high == pytest.approx(0.2)
    assert "paired" in how
    stat, ci, how = difference(_entry(0.5, (0.4, 0.6)), _entry(0.3, (0.2, 0.4)), "fvu", 200, 0)
    assert stat == pytest.approx(0.2) and ci.low == pytest.approx(0.2 - math.sqrt(0.02))
    assert ci.high == pytest.approx(0.2 + math.sqrt(0.02)) and "independent" in how


def test_pick_sae_respects_the_budget() -> None:
    res = {
        "pca": {"sae": False, "select_l0": 8.0, "select_fvu": 0.1},
        "sae-topk": {"sae": True, "select_l0": 8.0, "select_fvu": 0.3},
        "sae-jumprelu": {"sae": True, "select_l0": 20.0, "select_fvu": 0.05},  # better FVU, but over budget
        "sae-relu": {"sae": True, "select_l0": 8.5, "select_fvu": 0.2},  # within 10% slack
        "sae-batchtopk": {"sae": True, "select_l0": 8.0, "select_fvu": 0.25, "fvu": 0.01},  # held-out FVU unused
    }
    assert pick_sae(res, 8, 0.1) == "sae-relu"
    assert pick_sae(res, 8, 0.0) == "sae-batchtopk"


def test_a_pca_win_is_reported_as_not_supported() -> None:
    cfg = build_config("decompose", {"n_boot": 200})
    res = {
        "pca": {**_entry(0.1, (0.09, 0.11), [0.1, 0.09, 0.11]), "sae": False, "l0": 8.0, "select_l0": 8.0,
                "select_fvu": 0.1},
        "sae-topk": {**_entry(0.3, (0.29, 0.31), [0.3, 0.29, 0.31]), "sae": True, "l0": 8.0, "select_l0": 8.0,
                     "select_fvu": 0.3},
    }
    (v,) = verdicts_for("toy", res, 8, cfg)
    assert v.verdict == "not supported" and v.statistic == pytest.approx(-0.2) and "PCA wins" in v.note


def test_config_rejects_unknown_methods_and_layers() -> None:
    with pytest.raises(UserError, match="sae-nope"):
        build_config("decompose", {"methods": ["pca", "sae-nope"]})
    with pytest.raises(UserError, match="ks"):
        build_config("decompose", {"ks": []})
    with pytest.raises(UserError, match="not a device name"):
        build_config("decompose", {"sae_device": "gpu-please"})  # refused before any work starts
    small = build_config("decompose", EXPERIMENTS.get("decompose").small)
    assert small.ks == [32] and "sae-topk" in small.lm_methods and "pca" in small.lm_methods


def test_lm_layer_beyond_the_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    text_folder: Path) -> None:
    monkeypatch.setenv("INTERPLAB_CACHE", str(tmp_path / "cache"))
    lm_config = {**TINY["lm_config"], "text": str(text_folder)}
    with pytest.raises(UserError, match="lm_layer"):
        run_experiment("decompose", {**TINY, "subjects": ["lm"], "lm_layer": 9, "lm_config": lm_config}, tmp_path / "run")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import sys; from interplab.cli import main; sys.argv = ['interplab', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=300,
                          env=env)


def test_cli_runs_decompose_and_refuses_an_unknown_method(tmp_path: Path) -> None:
    env = {**os.environ, "INTERPLAB_CACHE": str(tmp_path / "cache")}
    sets = ["subjects=[synthetic]", "methods=[random,pca,sae-topk]", "ks=[4]", "linear_sparsify=[topk]",
            'synthetic={"n_features": 32, "d": 8}', "toy_train_samples=1024", "sae_steps=10",
            "sae_batch_size=256", "eval_batches=2", "toy_eval_batch_size=256", "n_boot=20"]
    args = [a for s in sets for a in ("--set", s)]
    r = _cli("run", "decompose", *args, "--out", str(tmp_path / "run"), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(data["metrics"]["synthetic/hidden"]) == {"random", "pca", "sae-topk"}
    r = _cli("run", "decompose", "--set", "methods=[pca,sae-nope]", "--out", str(tmp_path / "bad"), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "sae-nope" in r.stderr
