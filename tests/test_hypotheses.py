"""The 1a/1b/2a/2b statistics on hand-computed examples, the nulls, and the `hypotheses` experiment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from interplab.experiments.base import bootstrap_ci, decide
from interplab.metrics import hypotheses as H


pytestmark = pytest.mark.usefixtures("quiet_single_thread")


# A tiny planted example: 3 features written in 2 neurons, rows = features.
#   feature 0 -> neuron 0 only; feature 1 -> (1, -1); feature 2 -> (0, 2); E[code^2] = (1, 1, 0.25)
DIRS = torch.tensor([[1.0, 0.0], [1.0, -1.0], [0.0, 2.0]])
MOM = torch.tensor([1.0, 1.0, 0.25])


def test_participation_ratio_hand_values():
    assert H.participation_ratio(torch.tensor([1.0, 1.0, 1.0, 1.0])).item() == pytest.approx(4.0)
    assert H.participation_ratio(torch.tensor([3.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert H.participation_ratio(torch.tensor([2.0, 1.0])).item() == pytest.approx(9 / 5)
    assert math.isnan(H.participation_ratio(torch.zeros(3)).item())


def test_neuron_polysemanticity_hand_values():
    # signed: neuron 0 masses (1, 1, 0) -> PR 2; neuron 1 masses (0, 1, 0.25*4=1) -> PR 2
    st = H.neuron_polysemanticity(DIRS, MOM, rectified=False)
    assert st.pr.tolist() == pytest.approx([2.0, 2.0])
    assert st.fraction == 1.0 and st.median == pytest.approx(2.0)
    # rectified: the -1 weight carries no activation; neuron 1 masses (0, 0, 1) -> PR 1
    st = H.neuron_polysemanticity(DIRS, MOM, rectified=True)
    assert st.pr.tolist() == pytest.approx([2.0, 1.0])
    assert st.fraction == 0.5 and st.median == pytest.approx(1.5)


def test_dead_neuron_is_not_counted():
    dirs = torch.tensor([[1.0, -1.0, 0.0], [1.0, -2.0, 0.0]])  # neuron 1 only inhibited, neuron 2 unused
    st = H.neuron_polysemanticity(dirs, torch.ones(2), rectified=True)
    assert st.live.tolist() == [True, False, False]
    assert st.pr[0].item() == pytest.approx(2.0) and st.fraction == 1.0


def test_feature_polysemanticity_hand_values():
    st = H.feature_polysemanticity(DIRS)
    # feature 0: (1, 0) -> 1; feature 1: (1, 1) -> 2; feature 2: (0, 4) -> 1
    assert st.pr.tolist() == pytest.approx([1.0, 2.0, 1.0])
    assert st.fraction == pytest.approx(1 / 3) and st.median == pytest.approx(1.0)
    tiny = torch.cat([DIRS, torch.tensor([[0.01, 0.01]])])
    assert H.feature_polysemanticity(tiny).live.tolist() == [True, True, True, False]


def test_sparsity_hand_values():
    codes = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    p = H.firing_probability(codes)
    assert p.tolist() == pytest.approx([0.25, 0.25, 1.0])
    st = H.sparsity(p)
    assert st.fraction == pytest.approx(2 / 3) and st.median == pytest.approx(0.25)


def test_superposition_ground_truth_hand_values():
    W = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])  # antipodal pair in dim 0, dim 1 unused
    assert H.features_per_dimension(W) == pytest.approx(1.0)
    assert H.dims_per_feature(W) == pytest.approx(1.0)
    assert H.feature_dimensionality(W).tolist() == pytest.approx([0.5, 0.5, 0.0])
    square = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])  # two antipodal pairs in 2 dims
    assert H.feature_dimensionality(square).tolist() == pytest.approx([0.5] * 4)
    pentagon = torch.stack([torch.cos(2 * math.pi * torch.arange(5) / 5), torch.sin(2 * math.pi * torch.arange(5) / 5)])
    assert H.feature_dimensionality(pentagon).tolist() == pytest.approx([0.4] * 5)


def test_random_rotation_is_orthogonal_and_random():
    g = torch.Generator().manual_seed(0)
    q = H.random_rotation(6, g)
    assert torch.allclose(q @ q.T, torch.eye(6, dtype=torch.float64), atol=1e-12)
    # Haar: E[q_00^2] = 1/d
    vals = torch.stack([H.random_rotation(6, g)[0, 0] ** 2 for _ in range(1000)])
    assert vals.mean().item() == pytest.approx(1 / 6, abs=0.02)


def test_rotation_null_of_monosemantic_neurons_is_polysemantic():
    g = torch.Generator().manual_seed(0)
    dirs = torch.eye(5)  # every feature has its own neuron
    real = H.neuron_polysemanticity(dirs, torch.ones(5), rectified=False).fraction
    null = H.rotation_null(lambda d: H.neuron_polysemanticity(d, torch.ones(5), rectified=False).fraction, dirs, 50, g)
    assert real == 0.0 and null.mean().item() > 0.7


def test_gaussian_like_matches_moments():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(20_000, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]], dtype=torch.float64)  # (N, 3)
    z = H.gaussian_like(x, 200_000, g)
    assert torch.allclose(z.mean(0), x.mean(0), atol=0.01)
    assert torch.allclose(torch.cov(z.T), torch.cov(x.T), atol=0.01)


def test_null_pipeline_on_gaussian_data_puts_null_inside_ci():
    """On data that IS Gaussian, the null pipeline must reproduce the real statistic within its CI."""
    g = torch.Generator().manual_seed(2)
    mean = torch.tensor([0.3, -0.2, 0.0, 0.5, -1.0, 1.0], dtype=torch.float64)
    x = mean + torch.randn(4000, 6, generator=g, dtype=torch.float64)  # (N, 6) Gaussian "codes"
    codes = x.clamp(min=0)  # a code fires when positive
    real = H.sparsity(H.firing_probability(codes)).median
    rows = (codes > 0).double().numpy()  # (N, 6) bootstrap unit: the sample
    ci = bootstrap_ci(rows, stat=lambda r: float(np.median(r.mean(0))), n_boot=500, seed=0)
    null = H.sparsity(H.firing_probability(H.gaussian_like(x, 40_000, g).clamp(min=0))).median
    assert ci.low <= real <= ci.high
    assert ci.low <= null <= ci.high
    assert decide(ci, null) == "inconclusive"
    # and on data that is sparse, the same pipeline separates real from null
    sparse = x * (torch.rand(4000, 6, generator=g, dtype=torch.float64) < 0.1)  # (N, 6)
    ci = bootstrap_ci((sparse.clamp(min=0) > 0).double().numpy(), stat=lambda r: float(np.median(r.mean(0))),
                      n_boot=500, seed=0)
    null = H.sparsity(H.firing_probability(H.gaussian_like(sparse, 40_000, g).clamp(min=0))).median
    assert decide(ci, null, higher_is_support=False) == "supported"


def test_pca_and_fvu():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 4, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.5])
    rows = H.fvu_rows(x, H.pca_reconstruction(x, x, 2))
    # rank-2 PCA keeps the two largest variances: FVU = (1 + 0.25) / (9 + 4 + 1 + 0.25), approximately
    assert H.pooled_fvu(rows) == pytest.approx(1.25 / 14.25, rel=0.15)
    assert H.pooled_fvu(H.fvu_rows(x, H.pca_reconstruction(x, x, 4))) == pytest.approx(0.0, abs=1e-12)


def test_distinct_live_latents():
    dec = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [-1.0, 0.0]])
    codes = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])  # latent 2 never fires
    # latent 1 duplicates latent 0 (cos > 0.9); latent 3 is its antipode (cos = -1): a distinct feature
    assert H.distinct_live_latents(dec, codes).tolist() == [True, False, False, True]
    near = torch.tensor([[1.0, 0.0], [0.95, math.sqrt(1 - 0.95**2)], [0.85, -math.sqrt(1 - 0.85**2)]])
    assert H.distinct_live_latents(near, torch.ones(1, 3)).tolist() == [True, False, True]  # cos 0.95, 0.85


# ---------------------------------------------------------------- the experiment


def _by(findings, crux, density):
    return next(f.verdict for f in findings if f.verdict.crux == crux and f"density {density:g}" in f.verdict.subject)


def test_tms_1a_dense_not_supported_sparse_supported():
    """The paper's neuron-model finding as a verdict: monosemantic when dense, polysemantic when sparse."""
    from interplab.experiments.hypotheses import HypothesesConfig, tms_findings
    cfg = HypothesesConfig(tms_seeds=4, tms_samples=4000, n_rotations=20, n_boot=500, lm=False)
    findings = tms_findings(cfg)
    assert _by(findings, "1a", 1.0).verdict == "not supported"
    assert _by(findings, "1a", 0.05).verdict == "supported"
    assert _by(findings, "2a", 0.05).verdict == "supported"  # density 0.05 is sparse by construction
    assert _by(findings, "2b", 0.05).verdict == "supported"  # more than 5 features in 5 neurons


def test_hypotheses_tiny_end_to_end(tmp_path: Path):
    from interplab.experiments.base import run_experiment

    over = {"tms_seeds": 2, "tms_steps": 50, "tms_samples": 500, "synthetic": {"n_features": 32, "d": 8},
            "synthetic_samples": 500, "n_rotations": 3, "n_boot": 100, "lm": False}
    run_experiment("hypotheses", over, tmp_path)
    import json

    data = json.loads((tmp_path / "results.json").read_text())
    verdicts = data["verdicts"]
    assert len(verdicts) == 12  # 4 hypotheses x (2 tms densities + synthetic)
    for v in verdicts:
        assert v["crux"] in {"1a", "1b", "2a", "2b"} and v["subject"]
        assert v["verdict"] in {"supported", "not supported", "inconclusive"}
        assert len(v["ci"]) == 2 and "null" in v and "statistic" in v
    syn = {v["crux"]: v for v in verdicts if v["subject"].startswith("synthetic")}
    assert syn["2b"]["statistic"] == pytest.approx(4.0)  # 32 planted features in 8 dims
    assert syn["2a"]["verdict"] == "supported"
    assert {f"forest_{c}" for c in ("1a", "1b", "2a", "2b")} <= set(data["figures"])


def test_hypotheses_lm_pipeline_runs(tmp_path: Path):
    from interplab.experiments.hypotheses import HypothesesConfig
    from interplab.experiments.hypotheses_lm import lm_findings

    cfg = HypothesesConfig(lm_sites=["resid_post"], lm_tokens=1024, sae_widths=[1, 2], sae_steps=20,
                           sae_batch_size=256, n_rotations=3, n_boot=100, block=32)
    findings = lm_findings(cfg)
    assert [f.verdict.crux for f in findings] == ["1a", "1b", "2a", "2b"]
    assert all(np.isfinite(f.verdict.statistic) for f in findings)


def test_lm_eval_split_refuses_empty_parts():
    from interplab.errors import UserError
    from interplab.experiments.hypotheses_lm import split_eval

    assert split_eval(1000, 0.25, "x") == 250
    assert split_eval(3, 0.1, "x") == 1  # int(0.3) = 0 would hold out nothing and train on nothing
    with pytest.raises(UserError, match="lm_eval_fraction"):
        split_eval(1, 0.5, "x")  # the only row would be held out: nothing left to train on


def test_lm_sae_cache_key_depends_on_training_rows(tmp_path: Path, monkeypatch):
    """Changing the training rows (e.g. via lm_eval_fraction) must not reuse an SAE fitted on others."""
    from interplab import cache
    from interplab.experiments import hypotheses_lm
    from interplab.experiments.hypotheses import HypothesesConfig

    keys = []
    monkeypatch.setattr(cache, "entry", lambda kind, key: keys.append(key) or tmp_path / str(len(keys)))

    class _Fake:
        def fit(self, rows):
            return self

        def save(self, folder):
            pass

    monkeypatch.setattr(hypotheses_lm.decompose, "create", lambda *a, **k: _Fake())
    cfg = HypothesesConfig(lm=False)
    rows = torch.randn(20, 4)
    hypotheses_lm.fit_sae(rows, 8, cfg, {"site": "s"})
    hypotheses_lm.fit_sae(rows[:15], 8, cfg, {"site": "s"})
    hypotheses_lm.fit_sae(rows.clone(), 8, cfg, {"site": "s"})
    assert keys[0] != keys[1] and keys[0] == keys[2]
