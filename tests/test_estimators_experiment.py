"""The estimators experiment end to end on tiny settings, and the basis-independence machinery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from interplab.errors import UserError
from interplab.estimate.basis import basis_damage, independent_codes, rest_out
from interplab.experiments import load_result, run_experiment
from interplab.experiments.estimators import (
    EstimatorsConfig,
    nmse,
    rare_network,
    summarise,
)

TINY = {
    "widths": [8], "depths": [2], "networks": 2, "truth_log2": 12, "mc_log2": [4, 6], "mc_repeats": 2,
    "order": 2, "rare_widths": [8], "basis_subjects": ["tms"], "basis_samples": 256, "basis_repeats": 8,
    "tms": {"n_features": 6, "n_hidden": 3, "variant": "neuron", "density": [0.2], "steps": 50},
    "sae_steps": 10,
}


def test_tiny_end_to_end(tmp_path: Path, tmp_cache: Path, quiet_single_thread: None) -> None:
    run_experiment("estimators", TINY, tmp_path)
    data = load_result(tmp_path)
    assert data is not None
    mlp = data["metrics"]["mlp"]["w8_d2"]
    for method in ("mean", "cov", "cumulant", "cov_o2", "cumulant_o2", "montecarlo_16", "montecarlo_64"):
        assert set(mlp[method]) >= {"nmse", "flops"} and mlp[method]["flops"] > 0
    assert mlp["montecarlo_64"]["flops"] == pytest.approx(4 * mlp["montecarlo_16"]["flops"])
    for basis in ("neurons", "random", "pca", "ica", "sae-topk"):
        per = data["metrics"]["basis"]["tms"][basis]
        assert set(per) >= {"mean_error", "delta_loss", "per_repeat_delta_loss", "per_repeat_mean_error"}
        assert len(per["per_repeat_mean_error"]) == 8
        assert np.mean(per["per_repeat_mean_error"]) == pytest.approx(per["mean_error"])
    assert len(data["verdicts"]) == 3  # (a) one setting, (b) one width, (c) one subject
    for v in data["verdicts"]:
        assert v["verdict"] in ("supported", "not supported", "inconclusive")
        if v["ci"][0] is None:  # NaN (no unit of the tiny rare-event net fired in the truth's samples)
            assert v["verdict"] == "inconclusive"
        else:
            assert v["ci"][0] <= v["ci"][1]
    assert set(data["figures"]) == {"mse_vs_flops", "rare_mse_vs_flops", "basis_damage"}
    for rel in data["figures"].values():
        assert (tmp_path / rel).read_bytes()[:4] == b"\x89PNG"


def test_small_config_is_valid_and_reduced() -> None:
    from interplab.experiments.estimators import EstimatorsExperiment

    small = EstimatorsConfig(**EstimatorsExperiment.small)
    default = EstimatorsConfig()
    assert small.truth_log2 < default.truth_log2 == 22
    assert default.widths == [32, 64, 128, 256] and default.depths == [2, 4, 8]
    with pytest.raises(ValidationError):
        EstimatorsConfig(truth_log2=3)


def test_nmse_subtracts_the_truths_sampling_error() -> None:
    rng = np.random.default_rng(0)
    units, n_truth = 4000, 100
    var = np.ones(units)
    truth_err = rng.normal(0, np.sqrt(var / n_truth))  # the truth's own error; a perfect estimator sees only it
    parts = np.stack([truth_err**2, var / n_truth, var], -1)
    assert abs(float(nmse(parts))) < 5 * np.sqrt(2 / units) / n_truth


def test_verdict_favours_an_exact_estimator() -> None:
    """A fake setting where the estimator is exact and cheap: the verdict must be 'supported'."""
    cfg = EstimatorsConfig(truth_log2=16, order=1)
    rng = np.random.default_rng(1)
    results = []
    for _ in range(2):
        truth, var = rng.normal(size=50), np.ones(50)
        est = truth + rng.normal(0, 1e-4, 50)
        results.append({"truth": truth, "var": var, "per_sample": 1000.0,
                        "methods": {"mean": {"est": est, "flops": 1e4}, "cov": {"est": est + 0.3, "flops": 1e5},
                                    "cumulant": {"est": est + 0.3, "flops": 1e5}}})
    metrics, v = summarise(results, cfg, "fake")
    assert metrics["best"]["method"] == "mean" and v.verdict == "supported" and v.statistic > 0


def test_rare_network_fires_rarely() -> None:
    net = rare_network(32, seed=0)
    with torch.no_grad():
        p = net(torch.randn(20_000, 32)).mean()
    assert 0 < float(p) < 0.1


class _Rotation:
    """A fixed orthogonal basis with the decomposer interface."""

    def __init__(self, R: torch.Tensor):
        self.R = R

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.R.T

    def inverse_transform(self, c: torch.Tensor) -> torch.Tensor:
        return c @ self.R


def test_independence_in_the_true_basis_does_no_damage() -> None:
    g = torch.Generator().manual_seed(0)
    n = 20_000
    sources = torch.rand(n, 2, generator=g) ** 3 * torch.tensor([1.0, 3.0])  # independent, non-Gaussian
    R = torch.linalg.qr(torch.randn(2, 2, generator=g))[0]
    x = sources @ R  # (n, 2) mixed: coordinates dependent in the neuron basis
    product = lambda h: rest_out((h[:, :1] * h[:, 1:]), float((h[:, 0] * h[:, 1]).mean()))
    damage = basis_damage(product, x, {"true": _Rotation(R), "neurons": _Rotation(torch.eye(2))}, repeats=3)
    assert abs(damage["neurons"].delta_loss) > 10 * abs(damage["true"].delta_loss)
    shuffled = independent_codes(x, _Rotation(R), g)
    assert shuffled.mean(0) == pytest.approx(x.mean(0), abs=1e-5)  # column means are kept


def test_unknown_estimator_option_is_a_user_error() -> None:
    from interplab.estimate import Gaussian, estimate_mean
    from interplab.experiments.estimators import mlp_network

    with pytest.raises(UserError):
        estimate_mean(mlp_network(4, 1, 0), Gaussian.standard(4), "cov", n_samples=4)


def test_basis_subjects_are_validated_up_front() -> None:
    assert EstimatorsConfig(basis_subjects=["tms", "smollm2", "tiny-llama", "hf:/some/folder"]).basis_subjects
    for bad in ("mlp", "smolm2", "hf", "chartf"):
        with pytest.raises(ValidationError, match="choose tms or an LM subject") as err:
            EstimatorsConfig(basis_subjects=["tms", bad])
        assert "smollm2" in str(err.value) and "hf:<local folder or hub id>" in str(err.value)
    with pytest.raises(ValidationError, match="did you mean: smollm2"):
        EstimatorsConfig(basis_subjects=["smolm2"])


def test_basis_repeats_need_enough_for_a_ci() -> None:
    with pytest.raises(ValidationError):
        EstimatorsConfig(basis_repeats=3)
    assert EstimatorsConfig(basis_repeats=8).basis_repeats == 8


def test_basis_verdict_ranks_and_scores_on_separate_repeats() -> None:
    from interplab.estimate.basis import BasisDamage
    from interplab.experiments.estimators_basis import verdict

    # "a" looks best on the ranking repeats (first third) but not on the rest: the ranking repeats pick
    # it, and the difference is scored only on the later repeats, so its margin is not inflated
    a = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    b = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    c = [2.0] * 9
    damage = {k: BasisDamage(k, 0.0, float(np.mean(v)), 0.0, 0.0, v, [0.0] * 9)
              for k, v in {"a": a, "b": b, "c": c}.items()}
    v = verdict(damage, "s", seed=0)
    assert "the a basis" in v.crux and "(b)" in v.note
    assert v.statistic == pytest.approx(-0.5)  # scored on repeats 3..8 only
    assert "permutation noise only" in v.note and "ranked on 3" in v.note and "scored on 6" in v.note
