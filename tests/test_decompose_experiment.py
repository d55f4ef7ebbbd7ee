"""The decompose experiment: its pipeline's statistics, its controls' verdicts, end to end, and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from interplab.errors import UserError
from interplab.experiments import EXPERIMENTS, run_experiment
from interplab.experiments.base import build_config
from interplab.experiments.decompose import OPTIONAL, REQUIRED
from interplab.experiments.decompose_controls import Controls, Spec
from interplab.experiments.decompose_verdicts import pick_sae, refit_evidence
from interplab.hooks import activations, splice
from interplab.metrics.bootstrap import boot_counts
from interplab.metrics.paired import Aspect, Scorecard, pooled_fvu_difference
from interplab.subjects import load_subject
from interplab.verdicts import COUNTED, SUPERSEDED, judge

TINY: dict[str, Any] = {
    "methods": ["identity", "pca", "sae-topk"],
    "ks": [4, 8],
    "lm_ks": [8],
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
    "refits": 2,
    "eval_batches": 3,
    "toy_eval_batch_size": 256,
    "lm_eval_windows": 4,
    "n_boot": 50,
}


# --- the statistics ---------------------------------------------------------------------------------
def _batches() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Two batches of 2-d activations and two reconstructions with errors placed by hand."""
    x = [torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 2.0], [2.0, 2.0]])]
    a = [x[0] + torch.tensor([[1.0, 1.0], [1.0, 0.0]]), x[1].clone()]  # SSE 3, all in batch 1
    b = [x[0].clone(), x[1] + torch.tensor([[0.0, 0.0], [1.0, 0.0]])]  # SSE 1, all in batch 2
    return x, a, b


def test_pooled_fvu_difference_matches_a_hand_computation() -> None:
    x, a, b = _batches()
    # pooled mean (1, 1): every row is at squared distance 2, total variance 8; (3 - 1) / 8
    assert pooled_fvu_difference(x, a, b) == pytest.approx(0.25)
    cards = [Scorecard().score(x, r, r) for r in (a, b)]  # codes unused by FVU: the recons stand in
    counts = boot_counts(2, 100, 0)
    fa, fb = (c.fvu(counts) for c in cards)
    assert fa.value - fb.value == pytest.approx(0.25)
    # the round-1 statistic, a mean of per-batch FVUs about each batch's own mean (variance 2 each):
    # ((3 - 0) / 2 + (0 - 1) / 2) / 2 = 0.5, not the pooled 0.25
    per_batch = cards[0].per_batch_fvu() - cards[1].per_batch_fvu()
    assert per_batch.mean() == pytest.approx(0.5)
    # replicates are paired: each is the pooled difference of its resample. Batch 1 twice: mean (1, 0),
    # total 4, SSE 6 vs 0 -> 1.5; batch 2 twice: SSE 0 vs 2 -> -0.5; one of each: 0.25
    reps = fa.replicates - fb.replicates
    expected = np.where(counts[:, 0] == 2, 1.5, np.where(counts[:, 1] == 2, -0.5, 0.25))
    assert np.allclose(reps, expected) and len(set(expected)) == 3


def test_refit_evidence_is_signed_for_the_sae_and_pools_refits_with_the_sampling_variance() -> None:
    reps = np.zeros(50)
    pca = Aspect(0.1, reps + 0.1)
    saes = [Aspect(v, reps + v) for v in (0.29, 0.30, 0.31)]  # PCA's FVU is lower: PCA wins
    ev = refit_evidence(pca, saes, sae_is_lower=True)
    assert ev.statistic == pytest.approx(-0.2) and ev.ci[1] < 0 and ev.n_units == 3
    assert ev.extra["sampling_var"] == pytest.approx(0.0)
    v = judge("sae-fvu", ev, subject="toy", scale="small")
    assert v.verdict == "not supported"
    noisy = [Aspect(s.value, s.replicates + np.random.default_rng(0).normal(0, 0.05, 50)) for s in saes]
    wide = refit_evidence(pca, noisy, sae_is_lower=True)
    assert wide.ci[1] - wide.ci[0] > ev.ci[1] - ev.ci[0]  # the batch variance widens the interval
    mcc = refit_evidence(Aspect(0.2, reps + 0.2), [Aspect(0.5, reps + 0.5)] * 3, sae_is_lower=False)
    assert mcc.statistic == pytest.approx(0.3)  # higher is better: SAE - PCA


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


# --- the control subjects ---------------------------------------------------------------------------
def test_gaussian_companion_has_the_planted_mean_and_covariance_and_the_readout_has_a_loss() -> None:
    cfg = {"d": 8, "n_features": 24, "mean_active": 2.0}
    planted, gauss = load_subject("synthetic", **cfg), load_subject("synthetic", kind="gaussian", **cfg)
    acts = [activations(s.model, s.sample(200_000, torch.Generator().manual_seed(i)), ["hidden"], sites=s.sites)
            ["hidden"].double() for i, s in enumerate((planted, gauss))]
    assert torch.allclose(acts[0].mean(0), acts[1].mean(0), atol=4e-3)
    assert torch.allclose(torch.cov(acts[0].T), torch.cov(acts[1].T), atol=4e-3)
    assert (acts[1].abs() > 1e-6).float().mean() > 0.99 and (acts[0] == 0).all(1).float().mean() > 0.05
    rot = load_subject("synthetic", kind="rotation", d=8)
    F = rot.ground_truth["features"]
    assert torch.allclose(F @ F.T, torch.eye(8), atol=1e-5)
    read = load_subject("synthetic", readout_threshold=0.25, **cfg)
    x = read.sample(64, torch.Generator().manual_seed(0))
    assert float(read.loss(x)) == 0.0  # nothing spliced: no distortion
    with splice(read.model, {"hidden": torch.zeros_like}, sites=read.sites):
        assert float(read.loss(x)) > 0.1


# --- the controls' verdicts -------------------------------------------------------------------------
CONTROL_CFG = {"width_factor": 4, "sae_batch_size": 256, "sae_lr": 5e-3, "refits": 3, "n_boot": 200,
               "linear_sparsify": ["topk"]}
# k / d = 1/8 as at the small scale (at k / d = 1/4 these short fits lose FVU to PCA even on planted data)
TINY_SPEC = {"d": 48, "n_train": 4096, "batch_rows": 256, "k": 6, "methods": ("pca", "sae-topk"), "sae_steps": 150}


def test_controls_read_supported_when_planted_and_not_when_gaussian(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy controls through the real pipeline at a small dimension: FVU, loss and recovery."""
    monkeypatch.setenv("INTERPLAB_CACHE", str(tmp_path / "cache"))
    cfg = build_config("decompose", CONTROL_CFG)
    spec = Spec(**TINY_SPEC, n_batches=4, lm=False)
    out = Controls(cfg).of(spec, ["sae-fvu", "sae-dce", "sae-recovery"])
    for crux, (pos, neg) in out.items():
        v = judge(crux, pos, subject="control", positive=pos, negative=neg, scale="small")
        assert v.controls["positive"]["verdict"] == "supported", (crux, pos)
        assert v.controls["negative"]["verdict"] != "supported", (crux, neg)
        assert v.status == COUNTED and pos.n_units == 3
    again = Controls(cfg).of(spec, ["sae-fvu"])  # read back from the cache, not recomputed
    assert again["sae-fvu"][0].statistic == out["sae-fvu"][0].statistic


def test_interp_controls_read_supported_with_planted_labels_and_not_with_independent_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERPLAB_CACHE", str(tmp_path / "cache"))
    cfg = build_config("decompose", CONTROL_CFG)
    spec = Spec(**TINY_SPEC, n_batches=6, lm=True)
    pos, neg = Controls(cfg).of(spec, ["sae-interp"])["sae-interp"]
    v = judge("sae-interp", pos, subject="control", positive=pos, negative=neg, scale="small")
    assert v.controls["positive"]["verdict"] == "supported"
    assert v.controls["negative"]["verdict"] != "supported"


# --- end to end ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, text_folder: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("decompose")
    lm_config = {**TINY["lm_config"], "text": str(text_folder)}  # a few KB of text: tokenised at once
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTERPLAB_CACHE", str(out / "cache"))  # TMS weights, the LM harvest and controls stay private
        run_experiment("decompose", {**TINY, "lm_config": lm_config}, out / "run", scale="small")
    return out / "run", json.loads((out / "run" / "results.json").read_text())


def test_results_hold_every_metric_for_every_site_method_and_k(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = tiny_run
    metrics = data["metrics"]
    assert set(metrics) == {"synthetic/hidden", "tms/hidden", "tiny-llama/resid_post.1"}
    for site, methods in metrics.items():
        assert set(methods) == {"identity", "pca", "sae-topk"}
        for entry in methods.values():
            levels = (entry, entry["k4"]) if site != "tiny-llama/resid_post.1" else (entry,)
            for level in levels:
                assert set(REQUIRED) <= set(level)
                assert level["fvu"] is not None and level["l0"] is not None and level["bits_per_token"] is not None
                assert level["l0"] <= level["k"] + 1e-6  # hard budget: every method here caps the codes per token
        assert [r["seed"] for r in methods["sae-topk"]["refits"]] == [0, 1]
    synth, tms, lm = (metrics[k]["sae-topk"] for k in ("synthetic/hidden", "tms/hidden", "tiny-llama/resid_post.1"))
    assert synth["ce_score_zero"] is None and synth["kl_score"] is None  # no loss: undefined, kept as null
    assert {"mmcs", "mcc", "f1"} <= set(synth) and {"mmcs", "mcc", "f1"} <= set(tms)
    assert tms["delta_ce_nats"] is not None and tms["kl_score"] is None
    assert lm["kl_score"] is not None and lm["interp_score"] is not None and lm["k"] == 8
    assert set(OPTIONAL) >= {k for k in lm if k in OPTIONAL}


def test_every_verdict_is_judged_with_its_controls(tiny_run: tuple[Path, dict[str, Any]]) -> None:
    out, data = tiny_run
    by = {(v["subject"], v["crux"]): v for v in data["verdicts"]}
    expected = {("synthetic/hidden @ k=4", c) for c in ("sae-fvu", "sae-fvu-batchmean", "sae-recovery")}
    expected |= {("tms/hidden @ k=8", c) for c in ("sae-fvu", "sae-dce", "sae-recovery")}
    expected |= {("tiny-llama/resid_post.1 @ k=8", c) for c in ("sae-fvu", "sae-dce", "sae-interp", "sae-interp-raw")}
    assert expected <= set(by)
    assert not any(s.startswith("synthetic") and c == "sae-dce" for s, c in by)  # no loss there
    for v in by.values():
        assert v["controls"]["positive"]["ran"] and v["controls"]["negative"]["ran"]
        primary = v["crux"] not in ("sae-fvu-batchmean", "sae-interp-raw")
        assert v["status"] != SUPERSEDED if primary else v["status"] == SUPERSEDED
        assert len(v["ci"]) == 2 and v["null"] == 0.0
    assert set(data["cruxes"]) >= {"sae-fvu", "sae-dce", "sae-recovery", "sae-interp"}
    # the paired statistics (scorecards) and the yardstick (evaluate) agree where they measure the same thing
    lm = data["metrics"]["tiny-llama/resid_post.1"]
    refits = lm["sae-topk"]["refits"]
    for crux, key in (("sae-fvu", "fvu"), ("sae-dce", "delta_ce_nats"), ("sae-interp", "interp_score_adjusted")):
        pca = lm["pca"]["details"][key] if key.startswith("interp") else lm["pca"][key]
        sae = np.mean([r[key] for r in refits])
        diff = sae - pca if key.startswith("interp") else pca - sae
        assert by[("tiny-llama/resid_post.1 @ k=8", crux)]["statistic"] == pytest.approx(diff, rel=1e-6, abs=1e-9)
    for name in ("pareto_fvu", "pareto_delta_ce", "pareto_interp"):
        assert (out / data["figures"][name]).stat().st_size > 1000
    assert (out / "index.html").is_file()
    table = data["tables"]["methods"]
    assert len(table["rows"]) == 3 * (2 + 2 + 1) and len(table["rows"][0]) == len(table["columns"])


def test_config_rejects_unknown_methods_and_layers() -> None:
    with pytest.raises(UserError, match="sae-nope"):
        build_config("decompose", {"methods": ["pca", "sae-nope"]})
    with pytest.raises(UserError, match="ks"):
        build_config("decompose", {"ks": []})
    with pytest.raises(UserError, match="not a device name"):
        build_config("decompose", {"sae_device": "gpu-please"})  # refused before any work starts
    small = build_config("decompose", EXPERIMENTS.get("decompose").small)
    assert small.refits >= 3 and "sae-topk" in small.lm_methods and "pca" in small.lm_methods


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
            'synthetic={"n_features": 32, "d": 8}', "toy_train_samples=1024", "sae_steps=10", "refits=2",
            "sae_batch_size=256", "eval_batches=2", "toy_eval_batch_size=256", "n_boot=20"]
    args = [a for s in sets for a in ("--set", s)]
    r = _cli("run", "decompose", *args, "--out", str(tmp_path / "run"), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(data["metrics"]["synthetic/hidden"]) == {"random", "pca", "sae-topk"}
    r = _cli("run", "decompose", "--set", "methods=[pca,sae-nope]", "--out", str(tmp_path / "bad"), env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "sae-nope" in r.stderr


# --- resume after a kill ------------------------------------------------------------------------------
def _without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


@pytest.mark.slow
def test_a_killed_decompose_run_continues_from_its_finished_fits(tmp_path: Path) -> None:
    """SIGKILL midway: the rerun of the same command reads the finished fits back from the run folder
    (units/) and ends with the results of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = ["--set", 'subjects=["synthetic","tms"]', "--set", "ks=[4]", "--set", "refits=3",
            "--set", 'methods=["pca","sae-topk","sae-relu"]', "--set", "toy_train_samples=4096",
            "--set", "sae_steps=400", "--set", "sae_batch_size=256", "--set", "eval_batches=3",
            "--set", "toy_eval_batch_size=256", "--set", "n_boot=50",
            "--set", 'synthetic={"n_features":48,"d":16}',
            "--set", 'tms={"n_features":24,"n_hidden":12,"density":[0.1],"steps":100}']
    env = {**os.environ, "INTERPLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "interplab.cli", "run", "decompose", "--small", "-q", *sets]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env)
    deadline = time.time() + 600
    while len(list((killed / "units").glob("decomposer-*"))) < 3 and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (killed / "units").glob("decomposer-*")}
    assert len(finished) >= 3 and not (killed / "results.json").exists()
    for out in (killed, tmp_path / "straight"):
        done = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in (killed / "units").glob("decomposer-*")}
    assert all(after.get(name) == when for name, when in finished.items())  # read back, not refitted
    a, b = (json.loads((p / "results.json").read_text()) for p in (killed, tmp_path / "straight"))
    assert _without_timings(a["metrics"]) == _without_timings(b["metrics"])
    assert [v["statistic"] for v in a["verdicts"]] == [v["statistic"] for v in b["verdicts"]]
