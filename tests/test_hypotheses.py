"""The hypotheses statistics on hand-computed and planted cases, the nulls, the decision rules, and the
`hypotheses` experiment's controls end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from interplab.experiments.hypotheses_config import HypothesesConfig
from interplab.experiments.hypotheses_controls import WEIGHT_CONTROLS, planted_layer, planted_rows
from interplab.experiments.hypotheses_gap import GapSettings, gap_evidence
from interplab.experiments.hypotheses_weights import Layer, layer_values, rotations, weight_evidence
from interplab.metrics import hypotheses as H
from interplab.verdicts import decide, get

pytestmark = pytest.mark.usefixtures("quiet_single_thread")


def word(crux: str, ev) -> str:
    return decide(ev.ci, ev.null, get(crux).higher_is_support)


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
    assert H.median_log_pr(st) == pytest.approx(float(np.median(np.log([2.0, 1.0]))))


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
    assert H.represented_per_dimension(W, 0.5) == pytest.approx(1.0)  # 2 represented features / 2 dims
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


def test_gaussian_like_matches_moments():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(20_000, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]], dtype=torch.float64)  # (N, 3)
    z = H.gaussian_like(x, 200_000, g)
    assert torch.allclose(z.mean(0), x.mean(0), atol=0.01)
    assert torch.allclose(torch.cov(z.T), torch.cov(x.T), atol=0.01)


def test_gaussian_twin_matches_sample_moments_exactly_and_pca_cannot_tell():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(300, 40, generator=g, dtype=torch.float64) ** 3  # (N, d) few rows per dim, skewed
    twin = H.gaussian_twin(x, g)
    assert torch.allclose(twin.mean(0), x.mean(0), atol=1e-10)
    assert torch.allclose(torch.cov(twin.T), torch.cov(x.T), atol=1e-10)
    # a plain draw from the estimated moments does not match them in the sample (its spectrum spreads)
    plain = H.gaussian_like(x, 300, g)
    assert not torch.allclose(torch.cov(plain.T), torch.cov(x.T), atol=1e-3)
    # so PCA (fitted on the training rows, scored on held-out rows) scores alike on data and twin
    tr, ev = x[:200], x[200:]
    real = H.pooled_fvu(H.fvu_rows(ev, H.pca_reconstruction(tr, ev, 5)))
    t_tr, t_ev = H.gaussian_twin(tr, g), H.gaussian_twin(ev, g)
    null = H.pooled_fvu(H.fvu_rows(t_ev, H.pca_reconstruction(t_tr, t_ev, 5)))
    assert null == pytest.approx(real, abs=1e-9)


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


# ---------------------------------------------------------------- weight cruxes on planted weights


def _layer(rows: list[list[float]], rectified: bool = True) -> Layer:
    W = torch.tensor(rows, dtype=torch.float64)  # (n_features, m)
    return Layer(W, torch.ones(W.shape[0], dtype=torch.float64), rectified)


def test_weight_statistics_closed_form_on_planted_layers():
    rots = rotations(3, 20, seed=0)
    # each of 3 neurons mixes 3 features of equal mass (+, +, -): rectified PR 2, sign-blind PR 3
    mix = _layer([[1, 1, 1], [1, 1, 1], [-1, -1, -1]])
    v = layer_values(mix, rots)
    assert v["1a"] == pytest.approx(2.0) and v["1a-signblind"] == pytest.approx(3.0)
    assert v["1b"] == pytest.approx(3.0)  # every feature spread evenly over the 3 neurons
    # one feature per neuron: PR 1 everywhere, median log PR 0, so basis = the rotations' median log PR
    mono = _layer([[2, 0, 0], [0, 1, 0], [0, 0, 1]])
    v = layer_values(mono, rots)
    assert v["1a"] == pytest.approx(1.0) and v["1b"] == pytest.approx(1.0) and v["1a-frac"] == 0.0
    rotated = np.mean([H.median_log_pr(H.neuron_polysemanticity(mono.directions @ q, mono.second_moment, True))
                       for q in rots])
    assert v["basis"] == pytest.approx(rotated) and v["basis"] > 0
    # antipodal pairs: 2 represented features per neuron; 2b = 2
    anti = _layer([[1, 0], [-1, 0], [0, 1], [0, -1]])
    assert layer_values(anti, rotations(2, 3, seed=0))["2b"] == pytest.approx(2.0)


def test_weight_controls_separate_through_the_real_pipeline():
    """Every weight crux's planted positive reads supported and its negative does not, at the tms shape."""
    evs = {fam: weight_evidence([planted_layer(fam, 10, 5, 1000 + u) for u in range(4)], 10, 0, "planted")
           for fam in ("poly3", "spread3", "mono", "random", "antipodal")}
    for crux, (pos, neg) in WEIGHT_CONTROLS.items():
        assert word(crux, evs[pos][crux]) == "supported", crux
        assert word(crux, evs[neg][crux]) != "supported", crux


def test_basis_statistic_is_centred_on_random_directions():
    """Gaussian directions have no privileged basis: the statistic's mean over many layers is ~0."""
    vals = [layer_values(planted_layer("random", 10, 5, s), rotations(5, 10, seed=1))["basis"] for s in range(200)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))


def test_weight_evidence_resamples_layers_not_neurons():
    """The CI is a t interval over the layers: identical layers give a zero-width interval."""
    same = [planted_layer("poly3", 10, 5, 7)] * 3
    ev = weight_evidence(same, 5, 0, "copies")["1a"]
    assert ev.n_units == 3 and ev.ci[0] == pytest.approx(ev.ci[1])
    ev = weight_evidence([planted_layer("poly3", 10, 5, s) for s in range(3)], 5, 0, "layers")["1a"]
    assert ev.ci[0] < ev.statistic < ev.ci[1] and ev.extra["per_fit"] and len(ev.extra["per_fit"]) == 3


# ---------------------------------------------------------------- the gap decision rule (2a, 2b-width)


def _rows(fvu: float, n: int, noise: float, gen: torch.Generator, common: torch.Tensor | None = None) -> torch.Tensor:
    """fvu_rows-like (n, 2) with pooled FVU about `fvu`: per-row error and variance. `common` (n,):
    the same row noise for every pair (rows shared by all fits), instead of a fresh draw."""
    var = torch.ones(n, dtype=torch.float64)
    e = common if common is not None else torch.randn(n, generator=gen, dtype=torch.float64)
    return torch.stack([fvu * (1 + noise * e).clamp(min=0), var], 1)


def _tables(real_gaps, null_gaps, n=640, noise=0.0, seed=0, shared_rows=False):
    """One tables dict per pair: PCA at FVU 0.5, the wide SAE below it by the given gap."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, generator=g, dtype=torch.float64) if shared_rows else None
    out = []
    for rg, ng in zip(real_gaps, null_gaps):
        out.append({"real": {"pca": _rows(0.5, n, 0, g), 4: _rows(0.5 - rg, n, noise, g, common)},
                    "null": {"pca": _rows(0.5, n, 0, g), 4: _rows(0.5 - ng, n, 0, g)}})
    return out


SETTINGS = GapSettings(k=2, widths=(4,), steps=1, batch_size=1, block=64, n_boot=300)


def test_gap_rule_tests_real_minus_null_not_the_real_ci_against_a_null_point():
    """Round 1 compared the real gap's CI with ONE null fit's point value. Real gaps 0.10 with a tight
    CI sit above a first null fit of 0.05, but the null pairs average 0.15: not supported."""
    tables = _tables([0.10, 0.10, 0.10], [0.05, 0.20, 0.20], noise=0.05)
    ev = gap_evidence(tables, SETTINGS, shared_eval=True, what="pairs", cruxes=("2a",))["2a"]
    real_low = min(ev.extra["real_gap_per_unit"])
    assert real_low > ev.extra["null_gap_per_unit"][0]  # the round-1 rule would have said "supported"
    assert ev.statistic == pytest.approx(-0.05, abs=0.01)
    assert word("2a", ev) != "supported"
    # and a real gap above every null gap, consistently over pairs, does read supported
    ev = gap_evidence(_tables([0.10, 0.11, 0.10], [0.02, 0.03, 0.01]), SETTINGS, True, "pairs", cruxes=("2a",))["2a"]
    assert word("2a", ev) == "supported"


def test_gap_rule_adds_the_shared_held_out_variance():
    """Every pair is scored on the same held-out rows: their sampling variance is added to the pairs'
    spread (which cannot show it), so noisy held-out rows widen the interval."""
    tables = _tables([0.03, 0.031, 0.029], [0.0, 0.0, 0.0], n=256, noise=1.0, seed=1, shared_rows=True)
    shared = gap_evidence(tables, SETTINGS, shared_eval=True, what="pairs", cruxes=("2a",))["2a"]
    alone = gap_evidence(tables, SETTINGS, shared_eval=False, what="pairs", cruxes=("2a",))["2a"]
    assert shared.extra["sampling_var"] > 0
    assert shared.ci[1] - shared.ci[0] > 2 * (alone.ci[1] - alone.ci[0])
    assert shared.statistic == pytest.approx(alone.statistic)


def test_gap_rule_skips_the_width_test_with_one_width():
    tables = _tables([0.1, 0.1], [0.0, 0.0])
    assert set(gap_evidence(tables, SETTINGS, True, "pairs")) == {"2a", "2a-sparse"}


def test_lm_pipeline_on_planted_rows_separates_sparse_from_gaussian(tmp_cache: Path):
    """`site_evidence` (the LM pipeline) on planted rows in 24 dims: a sparse dictionary reads 2a
    supported, its Gaussian twin fed in as the real rows does not."""
    from interplab.experiments.hypotheses_lm import site_evidence

    cfg = HypothesesConfig(sae_k=3, sae_widths=[2], sae_refits=3, sae_steps=150, sae_batch_size=256, block=32,
                           n_boot=200, n_rotations=3, lm=False)
    dictionary = planted_rows("dictionary", 2400, 24, 4, 2.0, seed=3)
    gaussian = planted_rows("gaussian", 2400, 24, 4, 2.0, seed=3)
    pos = site_evidence(dictionary, cfg, ("2a", "1b"), "dictionary")
    neg = site_evidence(gaussian, cfg, ("2a",), "gaussian")["2a"]
    assert word("2a", pos["2a"]) == "supported"
    assert word("2a", neg) != "supported"
    assert pos["1b"].n_units == 3  # the weight cruxes resample the refits


# ---------------------------------------------------------------- the experiment


def test_hypotheses_tiny_end_to_end_controls_and_counting(tmp_path: Path, tmp_cache: Path):
    """A tiny toy run: every counted verdict passed both controls through the same pipeline; the
    weight cruxes' planted positives read supported and negatives do not; harness checks and
    superseded definitions are never counted."""
    from interplab.experiments.base import run_experiment

    over = {"tms_seeds": 3, "tms_steps": 60, "tms_samples": 1200, "toy_sae_steps": 60, "toy_sae_batch_size": 256,
            "synthetic": {"n_features": 32, "d": 8}, "synthetic_samples": 500, "n_rotations": 3, "lm": False}
    run_experiment("hypotheses", over, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    verdicts = data["verdicts"]
    by = {(v["crux"], v["subject"]): v for v in verdicts}
    tms = [s for _, s in by if s.startswith("tms")]
    assert len(set(tms)) == 2
    for crux in ("1a", "1b", "basis", "2b"):
        for subject in set(tms):
            v = by[crux, subject]
            assert v["controls"]["positive"]["verdict"] == "supported", crux
            assert v["controls"]["negative"]["verdict"] != "supported", crux
            assert v["status"] == "counted"
    for v in verdicts:
        if v["status"] == "counted":
            assert v["controls"]["positive"]["passed"] and v["controls"]["negative"]["passed"]
        if v["crux"] in ("2a-input", "2b-planted"):
            assert v["status"] == "harness check"
        if v["crux"] in ("1a-signblind", "1a-frac", "1b-frac", "2a"):
            assert v["status"] == "superseded"
    assert by["2a", next(iter(tms))]["controls"]["negative"]["verdict"] != "supported"  # a Gaussian is not sparse
    counted = sum(v["status"] == "counted" for v in verdicts)
    assert data["summary"].startswith(f"{counted} counted verdicts")
    assert {"forest_1a", "forest_basis", "forest_2a"} <= set(data["figures"])


def test_lm_eval_split_refuses_empty_parts():
    from interplab.errors import UserError
    from interplab.experiments.hypotheses_gap import split_eval

    assert split_eval(1000, 0.25, "x") == 250
    assert split_eval(3, 0.1, "x") == 1  # int(0.3) = 0 would hold out nothing and train on nothing
    with pytest.raises(UserError, match="eval_fraction"):
        split_eval(1, 0.5, "x")  # the only row would be held out: nothing left to train on


def test_lm_sae_cache_key_depends_on_training_rows(tmp_path: Path, monkeypatch):
    """Changing the training rows (e.g. via eval_fraction) must not reuse an SAE fitted on others."""
    from interplab import cache
    from interplab.experiments import hypotheses_gap

    keys = []
    monkeypatch.setattr(cache, "entry", lambda kind, key: keys.append(key) or tmp_path / str(len(keys)))

    class _Fake:
        def fit(self, rows):
            return self

        def save(self, folder):
            pass

    monkeypatch.setattr(hypotheses_gap.decompose, "create", lambda *a, **k: _Fake())
    rows = torch.randn(20, 4)
    hypotheses_gap.fit_sae(rows, 8, SETTINGS, 0, {"site": "s"})
    hypotheses_gap.fit_sae(rows[:15], 8, SETTINGS, 0, {"site": "s"})
    hypotheses_gap.fit_sae(rows.clone(), 8, SETTINGS, 0, {"site": "s"})
    hypotheses_gap.fit_sae(rows.clone(), 8, SETTINGS, 1, {"site": "s"})
    assert keys[0] != keys[1] and keys[0] == keys[2] and keys[0] != keys[3]  # rows and seed both count


@pytest.mark.slow
def test_hypotheses_lm_small_verdicts_have_controls(tmp_path: Path):
    """The real LM at a tiny scale: every LM verdict carries both controls from the same pipeline;
    the sparse dictionary reads 2a-sparse supported and the dense features do not."""
    from interplab.experiments.hypotheses_lm import lm_verdicts

    cfg = HypothesesConfig(lm_sites=["resid_post"], lm_tokens=1024, sae_widths=[1], sae_refits=3, sae_steps=60,
                           sae_batch_size=256, n_rotations=3, n_boot=200, block=32)
    judged = {j.verdict.crux: j.verdict for j in lm_verdicts(cfg, "small")}
    assert set(judged) == {"1a", "1a-frac", "1b", "1b-frac", "basis", "2a-sparse", "2a", "2b-width"}
    assert judged["2b-width"].status == "needs --scale default"
    for crux in ("1a", "1b", "basis", "2a-sparse", "2a"):
        assert judged[crux].controls["positive"]["ran"] and judged[crux].controls["negative"]["ran"]
    assert judged["2a-sparse"].controls["positive"]["verdict"] == "supported"
    assert judged["2a-sparse"].controls["negative"]["verdict"] != "supported"
