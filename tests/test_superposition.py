"""The `superposition` experiment: closed form, phase classification, agreement, geometry, end to end.

Trained models go to the real user cache (like tests/test_subjects_toy.py): the first run trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interplab.experiments import superposition as sp
from interplab.experiments import superposition_controls as planted
from interplab.experiments.base import EXPERIMENTS, run_experiment


pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def test_closed_form_threshold_values_and_continuity():
    got = sp.closed_form_threshold(np.array([0.5, 1.0, 2.0, 0.1, 10.0]))
    assert got == pytest.approx([2 / 4.5, 4 / 7, 4 / 9, 0.4 / 2.5, 4 / 25])
    eps = 1e-9
    left, right = sp.closed_form_threshold(np.array([1 - eps, 1 + eps]))
    assert left == pytest.approx(right, abs=1e-8)


def test_predicted_phase_and_boundary_margin():
    r = np.array([0.1, 10.0])
    s = np.array([0.01, 1.0])
    assert sp.predicted_phase(r, s).tolist() == [[2, 0], [2, 1]]  # sparse: superposition; dense: by importance
    near = sp.near_boundary(np.array([1.0, 0.5]), np.array([4 / 7, 0.01, 0.9]), 0.1)
    assert near.tolist() == [[True, False, True], [False, False, False]]  # r = 1: the dense cells meet r = 1 too


def test_classify_hand_cases():
    W = np.array([[[0.9, -0.8]], [[1.0, 0.05]], [[0.02, 1.1]], [[0.7, 0.7]], [[0.1, 0.1]]])  # (5, 1, 2)
    assert sp.classify(W).tolist() == [2, 0, 1, -1, -1]


def test_sticky_share_hand_value():
    # within 0.03 of 1, 3/4, 2/3, 1/2 (0.03 + 3 * 0.06) and of 2/5, 3/8 together ([0.345, 0.43]) over [0.3, 1]
    assert sp.sticky_share(0.03) == pytest.approx((0.03 + 0.18 + 0.085) / 0.7, abs=1e-4)


def test_phase_diagram_agrees_with_closed_form_on_reduced_grid():
    p = sp.phase_diagram(grid=6, seeds=4, steps=2000, batch=256, margin=0.1, seed=0)
    assert p.compared.sum() >= 20
    agree = (p.observed == p.predicted)[p.compared].mean()
    assert agree >= 0.9, (p.observed, p.predicted)
    assert set(np.unique(p.observed[p.compared])) >= {0, 1, 2}  # every phase appears


def test_feature_dimensionality_of_trained_antipodal_model():
    g = sp.geometry(sp.SuperpositionConfig(geo_features=20, geo_hidden=5, geo_densities=2, geo_min_density=0.3,
                                           geo_steps=2000, geo_batch_size=256))
    sparse = g.dims[1][g.represented[1]]
    assert g.d_star[0] > g.d_star[1]  # sparser: fewer dimensions per feature
    assert len(sparse) > 5  # more features than the 5 dimensions


def test_superposition_tiny_end_to_end(tmp_path: Path):
    over = {"intro_steps": 50, "intro_seeds": 1, "phase_grid": 3, "phase_seeds": 1, "phase_steps": 50,
            "phase_batch_size": 64, "geo_features": 8, "geo_hidden": 3, "geo_densities": 2, "geo_steps": 50,
            "geo_batch_size": 64, "neuron_densities": 2, "neuron_seeds": 2, "neuron_steps": 50}
    run_experiment("superposition", over, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert [v["crux"] for v in data["verdicts"]] == ["tms-phase", "tms-sticky", "tms-sticky-d1", "tms-neuron"]
    for v in data["verdicts"]:  # the controls do not depend on training, so they pass even at 50 steps
        assert v["controls"]["positive"]["verdict"] == "supported", v
        assert v["controls"]["negative"]["verdict"] != "supported", v
        assert v["crux"] in data["cruxes"]
    assert {"phase_diagram", "feature_geometry", "neuron_model", "intro_geometry"} <= set(data["figures"])
    for rel in data["figures"].values():
        assert (tmp_path / rel).stat().st_size > 1000
    assert data["metrics"]["phase"]["cells_total"] == 9


def test_small_scale_is_registered_with_a_12x12_grid():
    small = EXPERIMENTS.get("superposition").small
    assert small["phase_grid"] >= 12


def test_phase_controls_go_through_the_scoring_of_the_trained_grid():
    r, s = np.logspace(-1, 1, 8), np.logspace(-2, 0, 8)
    predicted = sp.predicted_phase(r, s)
    compared = ~sp.near_boundary(r, s, 0.1)
    good = sp.classify(planted.closed_form_weights(predicted))
    assert (good == predicted).all()
    assert sp.phase_evidence(good, predicted, compared, 0).statistic == 1.0
    shuffled = sp.classify(planted.permuted_cells(planted.closed_form_weights(predicted), 3))
    ev = sp.phase_evidence(shuffled, predicted, compared, 0)
    assert ev.statistic < ev.null + 0.05  # a random assignment does no better than a constant guess


def test_sticky_statistic_excludes_dedicated_dimensions_and_resamples_models():
    # one model of antipodal pairs (D = 1/2), one of dedicated features (D = 1): round 1 counted the
    # dedicated ones as sticky; the fractional form sees only the pairs
    pairs = planted.polytope_weights(4, 8, seed=0, noise=0.0)
    eye = torch.zeros(4, 8, dtype=torch.float64)
    eye[:, :4] = torch.eye(4)
    W = torch.stack([pairs, eye])
    from interplab.metrics import hypotheses as H

    dims = torch.stack([H.feature_dimensionality(w) for w in W]).numpy()
    rep = (W.norm(dim=1) > 0.5).numpy()
    new = sp.sticky_evidence(dims, rep, 0)
    old = sp.sticky_d1_evidence(dims, rep, 0)
    assert new.n_units == 2 and new.statistic == 1.0
    assert old.statistic == 1.0 and old.n_units == int(rep.sum())  # features, not models, were the unit
    lone = sp.sticky_evidence(dims[1:], rep[1:], 0)
    assert np.isnan(lone.statistic)  # dedicated dimensions alone say nothing about fractional geometry


def test_polytope_weights_have_the_sticky_dimensionalities():
    from interplab.metrics import hypotheses as H

    W = planted.polytope_weights(10, 40, seed=1, noise=0.0)
    d = H.feature_dimensionality(W)[W.norm(dim=0) > 0.5].numpy()
    assert set(np.round(d, 6)) <= {0.5, round(2 / 3, 6), 0.4, 0.75}


def test_neuron_statistic_is_the_median_pr_difference_per_seed():
    mono = [torch.from_numpy(planted.mixing_weights(5, 10, 1, i, noise=0.0)) for i in range(3)]
    mixed = [torch.from_numpy(planted.mixing_weights(5, 10, 2, i, noise=0.0)) for i in range(3)]
    ev = sp.neuron_evidence(mono, mixed)
    assert ev.statistic == pytest.approx(1.0) and ev.n_units == 3  # PR 2 - PR 1 on every seed
    flat = sp.neuron_evidence(mono, mono)
    assert flat.statistic == 0.0
