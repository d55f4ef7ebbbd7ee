"""The estimators experiment: its statistics, its network-level CI, the basis-study semantics, and a tiny
end-to-end run whose planted controls must read the right way."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from interplab.errors import UserError
from interplab.estimate.basis import BasisDamage, basis_damage, independent_codes, rest_out
from interplab.experiments import load_result, run_experiment
from interplab.experiments.estimators import EstimatorsConfig, EstimatorsExperiment, rare_network
from interplab.experiments.estimators_nets import methods, paired_network
from interplab.experiments.estimators_score import (
    Truth,
    advantage,
    evaluate_network,
    network_evidence,
    nmse_stats,
)

TINY = {
    "widths": [8], "depths": [2], "networks": 3, "ranking_networks": 1, "truth_log2": 12, "truth_chunks": 8,
    "mc_log2": [4, 6], "mc_repeats": 1, "order": 2, "control_width": 16, "rare_widths": [16],
    "basis_subjects": ["tms"], "basis_samples": 512, "basis_draws": 3, "basis_repeats": 8,
    "tms": {"n_features": 6, "n_hidden": 3, "variant": "neuron", "density": [0.2], "steps": 50},
    "sae_steps": 20,
}


def _controls(v: dict) -> tuple[str, str]:
    return v["controls"]["positive"]["verdict"], v["controls"]["negative"]["verdict"]


def test_tiny_end_to_end_controls_read_the_right_way(tmp_path: Path, tmp_cache: Path, quiet_single_thread: None) -> None:
    run_experiment("estimators", TINY, tmp_path)
    data = load_result(tmp_path)
    assert data is not None
    by = {(v["crux"], v["subject"]): v for v in data["verdicts"]}
    assert set(by) == {("est-mlp", "mlp w8_d2"), ("est-rare", "rare-event w16_d3"), ("est-basis", "tms hidden"),
                       ("est-basis-loss", "tms hidden")}
    # the linear network (propagation exact) must read supported, the paired network must not
    assert _controls(by["est-mlp", "mlp w8_d2"]) == ("supported", "not supported")
    assert _controls(by["est-rare", "rare-event w16_d3"]) == ("supported", "not supported")
    # independent neurons must not make the SAE look better than the neurons. (The planted positive of
    # est-basis does not read supported with a TopK SAE at any scale tried, so it is not asserted: the
    # crux stays uncalibrated, which is what its status must then say.)
    basis = by["est-basis", "tms hidden"]
    assert basis["controls"]["negative"]["verdict"] != "supported"
    assert basis["status"] == ("counted" if _controls(basis) == ("supported", "not supported") else "uncalibrated")
    assert by["est-basis-loss", "tms hidden"]["status"] == "superseded"
    mlp = data["metrics"]["mlp"]["w8_d2"]
    assert mlp["best"]["networks"] == 3 and len(mlp["best"]["per_network"]) == 3
    assert mlp["montecarlo_64"]["flops"] == pytest.approx(4 * mlp["montecarlo_16"]["flops"])
    for basis_name in ("neurons", "random", "pca", "ica", "sae-topk"):
        assert len(data["metrics"]["basis"]["tms"][basis_name]["per_draw_mean_error"]) == 3
    assert set(data["figures"]) == {"mse_vs_flops", "rare_mse_vs_flops", "basis_damage"}


def test_small_config_is_valid_and_reduced() -> None:
    small = EstimatorsConfig(**EstimatorsExperiment.small)
    default = EstimatorsConfig()
    assert small.truth_log2 < default.truth_log2
    assert small.networks >= 3 and default.networks > small.networks and small.basis_draws >= 3
    with pytest.raises(ValidationError):
        EstimatorsConfig(truth_log2=3)
    with pytest.raises(ValidationError, match="truth_chunks"):
        EstimatorsConfig(truth_log2=8, truth_chunks=64)
    with pytest.raises(ValidationError):
        EstimatorsConfig(networks=2)


def _synthetic_truth(mu: np.ndarray, cov: np.ndarray, n: int, chunks: int, rng: np.random.Generator) -> Truth:
    """Chunk means of n samples from N(mu, cov): correlated output units, as in a real network."""
    m = n // chunks
    means = rng.multivariate_normal(mu, cov / m, size=chunks)  # (K, units)
    return Truth(means, np.diag(cov).copy(), 1.0)


def test_nmse_is_unbiased_and_its_se_is_calibrated_with_correlated_units() -> None:
    rng = np.random.default_rng(0)
    units, n, chunks = 20, 4096, 16
    a = rng.normal(size=(units, units))
    cov = a @ a.T / units + 0.5 * np.ones((units, units))  # strongly correlated units
    mu = rng.normal(size=units)
    guess = mu + rng.normal(0, 0.01, units)
    true = float(((guess - mu) ** 2).sum() / np.diag(cov).sum())
    vals, ses = zip(*(nmse_stats(guess, _synthetic_truth(mu, cov, n, chunks, rng)) for _ in range(400)))
    vals = np.array(vals)
    assert abs(vals.mean() - true) < 4 * vals.std() / math.sqrt(len(vals))  # unbiased
    assert 0.7 < np.mean(ses) / vals.std() < 1.4  # the jackknife SE matches the spread across truths
    assert np.mean(vals + 2 * np.array(ses) >= true) > 0.93  # nmse + 2 SE is an upper bound, ~97.7%


def test_exact_estimator_gives_a_finite_lower_bound_not_a_collapsed_point() -> None:
    """Below the truth's resolution the network's value rests on nmse + 2 SE (review section B)."""
    rng = np.random.default_rng(1)
    units = 30
    cov = np.eye(units)
    mu = rng.normal(size=units)
    values = []
    for _ in range(5):
        truth = _synthetic_truth(mu, cov, 1 << 14, 16, rng)
        nmse, se = nmse_stats(mu, truth)  # exact estimate: the true nmse is 0
        adv, kind = advantage(nmse, se, flops=10.0, per_sample=1.0, zero=1.0)
        values.append(adv)
        assert math.isfinite(adv) and kind == "montecarlo"
        assert adv <= math.log10(0.1 / (2 * se)) + 1e-9  # never above what the resolution allows
    assert np.ptp(values) > 0  # each network's bound is its own: the CI does not collapse to a point


def test_the_estimate_zero_never_beats_the_baseline() -> None:
    """On a rare event 0 beats sampling at small N; the baseline contains it, so it cannot win."""
    rng = np.random.default_rng(2)
    p = np.full(40, 1e-3)
    truth = _synthetic_truth(p, np.diag(p * (1 - p)), 1 << 16, 16, rng)
    zero, _ = nmse_stats(np.zeros(40), truth)
    nmse, se = nmse_stats(np.zeros(40), truth)
    assert zero < 1 / 20  # the estimate 0 is better than Monte Carlo with 20 samples ...
    adv, kind = advantage(nmse, se, flops=20.0, per_sample=1.0, zero=zero)
    assert kind == "zero" and adv < 0  # ... but not better than itself plus its uncertainty


class _Recorder:
    """make_net that records the seeds it was asked for."""

    def __init__(self, width: int) -> None:
        self.width, self.seeds = width, []

    def __call__(self, seed: int) -> torch.nn.Sequential:
        self.seeds.append(seed)
        return paired_network(self.width, seed)


def test_network_evidence_resamples_networks_ranked_apart_from_scored() -> None:
    cfg = EstimatorsConfig(truth_log2=10, truth_chunks=8, networks=4, ranking_networks=2, mc_log2=[4], order=1)
    make = _Recorder(8)
    ev, metrics, scored = network_evidence(make, 8, cfg)
    assert len(make.seeds) == 6 and len(set(make.seeds)) == 6  # 2 ranking + 4 scored, all distinct networks
    assert ev.n_units == 4 and len(ev.extra["per_fit"]) == 4 and len(scored) == 4
    values = np.array(ev.extra["per_fit"])
    assert ev.statistic == pytest.approx(values.mean())
    half = (ev.ci[1] - ev.ci[0]) / 2
    assert half == pytest.approx(3.182 * values.std(ddof=1) / 2, rel=1e-3)  # t(3) over networks
    assert metrics["best"]["method"] in methods(1)


def test_every_estimator_loses_on_the_paired_network() -> None:
    """The planted negative of est-mlp: |z| presumed Gaussian puts mass below 0 that |z| has not."""
    cfg = EstimatorsConfig(truth_log2=14, truth_chunks=16, order=2)
    res = evaluate_network(paired_network(32, 0), 32, cfg, seed=0)
    for key, m in res["methods"].items():
        assert m["advantage"] < -0.3, key


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


class _Nothing:
    """A 'basis' that explains nothing: no codes, everything is reconstruction error."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :0]

    def inverse_transform(self, c: torch.Tensor) -> torch.Tensor:
        return torch.zeros(c.shape[0], 2)


def test_a_basis_that_shrinks_the_output_variance_does_not_win() -> None:
    """x = (s, s): the true basis (1, 1)/√2 keeps the joint distribution, the neurons do not. Scored row by
    row against unpaired targets (round 1), the neurons look better because their product distribution
    halves Var(x1 + x2); the error of the predicted output mean picks the true basis."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(40_000, 1, generator=g)
    x = torch.cat([s, s], 1)  # (n, 2)
    target = torch.relu(x.sum(1) - 1)  # the clean outputs, the row-wise targets

    def rest(h: torch.Tensor) -> object:
        out = torch.relu(h.sum(1, keepdim=True) - 1)  # (n, 1)
        return rest_out(out, float((out[:, 0] - target).square().mean()))

    R = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)
    damage = basis_damage(rest, x, {"true": _Rotation(R), "neurons": _Rotation(torch.eye(2))}, repeats=4)
    assert damage["neurons"].delta_loss < damage["true"].delta_loss  # the round-1 loss rewards the shrinkage
    assert damage["true"].mean_error < 0.1 * damage["neurons"].mean_error  # mean_error does not
    assert damage["neurons"].mean_error > 0.03


def test_independence_in_the_true_basis_does_no_damage_and_nothing_scores_as_neurons() -> None:
    g = torch.Generator().manual_seed(0)
    n = 20_000
    sources = torch.rand(n, 2, generator=g) ** 3 * torch.tensor([1.0, 3.0])  # independent, non-Gaussian
    R = torch.linalg.qr(torch.randn(2, 2, generator=g))[0]
    x = sources @ R  # (n, 2) mixed: coordinates dependent in the neuron basis

    def product(h: torch.Tensor) -> object:
        return rest_out(h[:, :1] * h[:, 1:], 0.0)

    bases = {"true": _Rotation(R), "neurons": _Rotation(torch.eye(2)), "nothing": _Nothing()}
    damage = basis_damage(product, x, bases, repeats=3)
    assert damage["neurons"].mean_error > 10 * damage["true"].mean_error
    # what a basis does not reconstruct is presumed independent per neuron coordinate
    assert damage["nothing"].mean_error == pytest.approx(damage["neurons"].mean_error, rel=0.2)
    shuffled = independent_codes(x, _Rotation(R), g)
    assert shuffled.mean(0) == pytest.approx(x.mean(0), abs=1e-5)  # column means are kept


def test_basis_pipeline_gives_one_value_per_draw() -> None:
    from interplab.experiments.estimators_basis import VERDICT_BASES, basis_pipeline, planted_draws

    cfg = EstimatorsConfig(basis_samples=512, basis_draws=3, basis_repeats=8, sae_steps=20)
    ev, damages = basis_pipeline(planted_draws(cfg, positive=False), cfg, VERDICT_BASES)
    assert ev.n_units == 3 and len(damages) == 3
    diffs = [d["neurons"].mean_error - d["sae-topk"].mean_error for d in damages]
    assert ev.extra["per_fit"] == pytest.approx(diffs)
    assert ev.ci[1] - ev.ci[0] > 0


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


def test_basis_repeats_need_enough_for_the_round1_split() -> None:
    with pytest.raises(ValidationError):
        EstimatorsConfig(basis_repeats=3)
    assert EstimatorsConfig(basis_repeats=8).basis_repeats == 8


def test_round1_statistic_ranks_and_scores_on_separate_repeats() -> None:
    from interplab.experiments.estimators_basis import loss_evidence

    # "a" looks best on the ranking repeats (first third) but not on the rest: the ranking repeats pick
    # it, and the difference is scored only on the later repeats, so its margin is not inflated
    a = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    b = [0.5] * 9
    c = [2.0] * 9
    damage = {k: BasisDamage(k, 0.0, float(np.mean(v)), 0.0, 0.0, v, [0.0] * 9) for k, v in {"a": a, "b": b, "c": c}.items()}
    ev, best, second = loss_evidence(damage, seed=0)
    assert (best, second) == ("a", "b")
    assert ev.statistic == pytest.approx(-0.5)  # scored on repeats 3..8 only
    assert ev.n_units == 6
