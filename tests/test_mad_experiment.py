"""The mad experiment end to end on tiny settings: controls read as they must, the negative control sits
at chance for every detector, and the leave-one-seed-out choice never looks at the seed it scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from interplab.experiments import load_result, run_experiment
from interplab.experiments import mad as M
from interplab.experiments import mad_pipeline as P

TINY = {
    "subjects": ["maxofk-backdoor", "mlp-backdoor"], "seeds": 3,
    "maxofk": {"steps": 200}, "mlp": {"steps": 300, "lr": 1e-2, "poison_rate": 0.2},
    "n_trusted": 600, "n_test": 200, "n_eval": 500, "asr_min": 0.6,
    "sae": {"steps": 30, "k": 4, "expansion": 2}, "isolation_forest": {"n_estimators": 10},
    "twin_detection": False,
}


def test_tiny_run_controls_read_as_they_must(tmp_path: Path, tmp_cache: Path, quiet_single_thread) -> None:
    run_experiment("mad", TINY, tmp_path, scale="small")
    data = load_result(tmp_path)
    assert data is not None and set(data["figures"]) == {"auroc_heatmap", "roc"}
    got = {(v["crux"], v["subject"]) for v in data["verdicts"]}
    assert got == {("mad-works", c) for c in ("maxofk-backdoor", M.SAME, "mlp-backdoor")} | {
        ("mad-explain", c) for c in ("maxofk-backdoor", M.SAME, "mlp-backdoor")} | {
        ("mad-same-output", M.SAME), ("mad-control", "maxofk-backdoor"), ("mad-control", "mlp-backdoor")}
    for v in data["verdicts"]:
        assert v["controls"]["positive"]["verdict"] == "supported", v
        assert v["controls"]["negative"]["verdict"] != "supported", v
        assert v["status"] == "counted"
    assert len(data["tables"]["subjects"]["rows"]) == 6
    assert all(np.isfinite(v["statistic"]) for v in data["verdicts"])


@pytest.fixture(scope="module")
def tiny_case() -> tuple[list[P.SeedData], list[P.Probe]]:
    cfg = M.MadConfig(**{**TINY, "subjects": ["mlp-backdoor"], "seeds": 4})
    pairs, _ = M.train_subjects(cfg)
    cases, sites = M.build_cases(cfg, pairs)
    return cases["mlp-backdoor"], M.plan(cfg, sites["mlp-backdoor"])


def test_negative_control_every_detector_at_chance(tiny_case, quiet_single_thread) -> None:
    """With "anomalies" drawn from the trusted distribution, every detector's AUROC interval over seeds
    holds 0.5 (t intervals at the Bonferroni level over the detectors, so that "every" has 95%)."""
    case, plan = tiny_case
    table = P.score_table(P.planted_negative(case), plan, P.Fits())
    K, S = len(plan), len(case)
    q = stats.t.ppf(1 - 0.05 / (2 * K), S - 1)
    for j, key in enumerate(table.keys):
        x = table.clean[:, j]
        half = q * x.std(ddof=1) / np.sqrt(S)
        assert x.mean() - half <= 0.5 <= x.mean() + half, (key, x)


def test_positive_control_is_found_by_covariance_detectors_and_missed_by_output_ones(tiny_case,
                                                                                     quiet_single_thread) -> None:
    """An 8-sd shift along a random direction: detectors with a full covariance see it (isolation
    forests, TopK SAEs and the independent-units explanation need not: axis-parallel splits, k latents
    per input, and marginal variances that the direction's correlations make large), the logits do not."""
    case, plan = tiny_case
    table = P.score_table(P.planted_positive(case, 8.0), plan, P.Fits())
    for j, key in enumerate(table.keys):
        if key.split("@")[0] in ("mahalanobis", "pca-residual", "explain-cov") and "logits" not in key:
            assert table.clean[:, j].mean() > 0.95, key
        if table.families[j] == "output":  # logits untouched: output-only detectors see nothing
            assert abs(table.clean[:, j].mean() - 0.5) < 0.1, key


def test_leave_one_seed_out_never_uses_the_scored_seed() -> None:
    values = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])  # column 1 wins on seeds 1, 2; column 0 on seed 0
    assert P.loso(values).tolist() == [1, 0, 0]
    assert P.loso(values, np.array([True, False])).tolist() == [0, 0, 0]
    table = P.Table(["a@x", "b@x"], ["activations"] * 2, [0, 1, 2], values, values, values, values)
    ev = P.ev_works(table)
    assert ev.extra["chosen"] == ["b@x", "a@x", "a@x"]
    assert ev.statistic == pytest.approx(0.1)  # a winner's-curse max would read 0.9
