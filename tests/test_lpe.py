"""Low-probability estimation: exact ground truth, unbiasedness, QLD/GLD against direct computation, budgets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import norm

from interplab.lpe import METHODS, Problem, estimate, event_probs, extrapolate, methods
from interplab.lpe.groundtruth import enumerate_event_probs, last_logits
from interplab.subjects.chartf import VOCAB, CharTFConfig, CharTransformer

V = len(VOCAB)


@pytest.fixture(autouse=True)
def _one_thread(quiet_single_thread):
    """Tiny tensors on a shared 2-core machine: one torch thread, no progress bars."""


def tiny_model(seed: int = 0, n_layers: int = 1) -> CharTransformer:
    torch.manual_seed(seed)
    model = CharTransformer(CharTFConfig(n_layers=n_layers, d_model=16, n_heads=2, d_mlp=32, context=8))
    with torch.no_grad():
        model.unembed.weight.mul_(8.0)  # sharper logits: a spread of event probabilities
    return model.eval()


def skewed_dists(L: int, k: int, decay: float, offset: int = 1) -> torch.Tensor:
    row = torch.zeros(V, dtype=torch.float64)
    row[offset : offset + k] = decay ** torch.arange(k, dtype=torch.float64)
    return (row / row.sum()).expand(L, V).clone()  # (L, V)


def test_enumeration_equals_bruteforce_loop():
    model = tiny_model(1, n_layers=2)
    dists = skewed_dists(3, 5, 0.6)
    exact = enumerate_event_probs(model, dists, batch=7)  # odd batch: chunks cross radix boundaries
    brute = torch.zeros(V, dtype=torch.float64)
    for combo in itertools.product(range(1, 6), repeat=3):
        ids = torch.tensor([combo])  # (1, 3)
        top = int(model(ids)[0, -1].argmax())
        brute[top] += float(torch.prod(dists[torch.arange(3), ids[0]]))
    torch.testing.assert_close(exact, brute, rtol=1e-12, atol=1e-15)
    assert abs(float(exact.sum()) - 1.0) < 1e-12


def _rare_case() -> Problem:
    model = tiny_model(2)
    dists = skewed_dists(4, 8, 0.55)
    probs = event_probs(model, dists)
    target = int(torch.argmin((probs.clamp_min(1e-30).log10() + 3.0).abs()))
    assert 1e-4 < probs[target] < 1e-2, probs[target]
    return Problem(model, dists, target)


@pytest.mark.parametrize("method, budget, seeds", [("naive", 2048, 150), ("itgis", 960, 150)])
def test_unbiased(method, budget, seeds, tmp_cache, quiet_single_thread):
    problem = _rare_case()
    truth = float(event_probs(problem.model, problem.dists)[problem.target])
    ests = np.array([estimate(problem, method, budget, seed).probability for seed in range(seeds)])
    se = ests.std(ddof=1) / np.sqrt(seeds)
    assert se > 0
    assert abs(ests.mean() - truth) < 4 * se, (ests.mean(), truth, se)


def _hand_sample(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((70, 4)) @ rng.standard_normal((4, 4))  # (n, d) correlated
    W, b = rng.standard_normal((6, 4)), rng.standard_normal(6)  # (V, d), (V,)
    top = (acts @ W.T + b).argmax(1)
    target = int(np.bincount(top, minlength=6).argmin())  # the rarest argmax
    return acts, W, b, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qld_fast_count_equals_all_pairs(seed):
    acts, W, b, t = _hand_sample(seed)
    fast = extrapolate.qld_from_acts(acts, W, b, t)
    assert fast == pytest.approx(extrapolate.qld_bruteforce(acts, W, b, t), abs=1e-12)
    assert 0.0 <= fast <= 1.0


def test_whitening_and_shortest_direction():
    acts, W, b, t = _hand_sample(3)
    wh = extrapolate.whiten(acts, W, b)
    np.testing.assert_allclose(wh.u.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(wh.u, rowvar=False), np.eye(4), atol=1e-3)
    np.testing.assert_allclose(wh.c + wh.u @ wh.G.T, acts @ W.T + b, atol=1e-9)  # same logits
    d = extrapolate.shortest_direction(wh.G, wh.c, t)
    assert abs(np.linalg.norm(d) - 1) < 1e-9
    # along d, t becomes the argmax at the smallest distance of any direction tried at random
    ks = np.linspace(0, 50, 5001)

    def reach(direction):
        hit = (wh.c + ks[:, None] * (wh.G @ direction)).argmax(1) == t  # (5001,)
        return ks[hit.argmax()] if hit.any() else np.inf
    rng = np.random.default_rng(0)
    others = [reach(v / np.linalg.norm(v)) for v in rng.standard_normal((300, 4))]
    assert reach(d) <= min(others) + 0.02
    u = extrapolate.min_norm_point(wh.G, wh.c, t)  # the QP's optimum: feasible, and no shorter point is
    M = wh.G[t] - np.delete(wh.G, t, 0)
    r = np.delete(wh.c, t) - wh.c[t]
    assert (M @ u >= r - 1e-9).all()
    assert (M @ (u * 0.999) < r).any()


def test_gld_is_gaussian_tail_of_margins():
    acts, W, b, t = _hand_sample(4)
    logits = acts @ W.T + b
    m = np.array([row[t] - max(v for j, v in enumerate(row) if j != t) for row in logits])
    expected = norm.sf(0.0, loc=m.mean(), scale=m.std(ddof=1))
    assert extrapolate.gld_from_acts(acts, W, b, t) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("budget", [50, 700, 20000])
def test_budget_respected_and_estimate_is_a_probability(method, budget, quiet_single_thread):
    from interplab.errors import UserError

    model = tiny_model(3)
    problem = Problem(model, skewed_dists(4, 6, 0.5), target=7)
    try:
        est = estimate(problem, method, budget, seed=0)
    except UserError:
        assert method == "propagate" and budget < 20000  # its fixed cost may not fit a small budget
        return
    assert 0 < est.cost <= budget
    assert 0.0 <= est.probability <= 1.0


def test_mhis_is_consistent_on_a_common_event(quiet_single_thread):
    model = tiny_model(2)
    dists = skewed_dists(4, 8, 0.55)
    probs = event_probs(model, dists)
    target = int(torch.argmin((probs.clamp_min(1e-30) - 0.05).abs()))
    problem = Problem(model, dists, target)
    # the tiny model's logits are sharp (x8), so a temperature of 5 keeps the chains mixing
    est = np.mean([methods.mhis_trace(problem, 12000, s, temperature=5.0).at(12000)[0] for s in range(6)])
    assert est == pytest.approx(float(probs[target]), rel=0.25)


def test_traces_give_prefix_estimates():
    tr = methods.Trace(np.array([10.0, 20.0, 30.0]), np.array([0.1, 0.2, 0.3]))
    assert tr.at(25) == (0.2, 20.0) and tr.at(5) == (0.0, 0.0) and tr.at(30) == (0.3, 30.0)


def test_last_logits_match_full_forward():
    model = tiny_model(5, n_layers=2)
    ids = torch.randint(1, 10, (6, 5))
    torch.testing.assert_close(last_logits(model, ids), model(ids)[:, -1])


def test_gaussian_argmax_integration_matches_plain_sampling():
    from interplab.lpe.propagate import gaussian_argmax_probs

    rng = np.random.default_rng(0)
    d, Vs = 3, 4
    mu, L = rng.standard_normal(d), rng.standard_normal((d, d))
    S = L @ L.T
    W, b = rng.standard_normal((Vs, d)), np.array([2.0, 0.0, -1.0, -4.0])
    probs, flops = gaussian_argmax_probs(mu, S, W, b, list(range(Vs)), n=20000)
    h = rng.multivariate_normal(mu, S + 1e-5 * np.eye(d), size=400_000)  # (n, d)
    freq = np.bincount((h @ W.T + b).argmax(1), minlength=Vs) / len(h)
    for t in range(Vs):
        se = np.sqrt(freq[t] * (1 - freq[t]) / len(h))
        assert abs(probs[t] - freq[t]) < 5 * se + 0.03 * freq[t], (t, probs[t], freq[t])
    assert flops > 0


def test_propagate_method_on_tiny_model(tmp_cache, quiet_single_thread):
    from interplab.lpe.propagate import propagate_all

    model = tiny_model(4, n_layers=2)
    dists = skewed_dists(4, 6, 0.6)
    probs, cost = propagate_all(model, dists, n=1024)
    assert abs(probs.sum() - 1) < 0.1  # the argmax events partition the space
    assert np.all((probs >= 0) & (probs <= 1)) and cost > 0
    exact = event_probs(model, dists).numpy()
    top = int(exact.argmax())
    assert probs[top] > 0.3 * exact[top]  # the common output is found
    est = estimate(Problem(model, dists, top), "propagate", budget=10**6, seed=0)
    alone, cost_alone = propagate_all(model, dists, [top])
    assert est.probability == pytest.approx(alone[top]) and est.cost == cost_alone


def test_experiment_end_to_end_on_tiny_settings(tmp_path, tmp_cache):
    import json

    from interplab.experiments import run_experiment

    overrides = {"layers": [1], "distributions": ["capitals", "digits_punct"], "positions": 2,
                 "budgets": [256, 1024], "train_steps": 20, "p_high": 0.5, "max_targets": 3}
    run_experiment("lpe", overrides, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    cell = data["metrics"]["1L"]["itgis"]["1024"]
    assert {"is_loss", "log_se", "is_loss_fitted", "log_se_fitted", "floored"} <= set(cell)
    assert set(data["metrics"]["1L"]) == {"naive", "itgis", "mhis", "qld", "gld", "propagate"}
    assert len(data["verdicts"]) == 3 and (tmp_path / "figures" / "scatter.png").is_file()
    assert data["metrics"]["subjects"]["1L"]["char_loss"] < data["metrics"]["subjects"]["1L"]["unigram_loss"]


def test_config_refuses_bad_budgets_and_target_range():
    from pydantic import ValidationError

    from interplab.experiments.lpe import LPEConfig

    with pytest.raises(ValidationError):
        LPEConfig(budgets=[1024, 2])
    with pytest.raises(ValidationError, match="p_low"):
        LPEConfig(p_low=1e-3, p_high=1e-5)
    assert LPEConfig(budgets=[3]).budgets == [3]


@pytest.mark.parametrize("method, minimum", [("itgis", 3), ("mhis", 6)])
def test_sequential_methods_refuse_a_budget_below_one_step(method, minimum, quiet_single_thread):
    from interplab.errors import UserError

    problem = Problem(tiny_model(3), skewed_dists(4, 6, 0.5), target=7)
    with pytest.raises(UserError, match=f"at least {minimum}"):
        estimate(problem, method, minimum - 1, seed=0)
    assert estimate(problem, method, minimum, seed=0).cost > 0


def _fake_scored(models=("1L", "2L"), dists=("a", "b", "c"), targets=4, methods_=("naive", "qld")):
    rng = np.random.default_rng(0)
    rows = []
    for m in models:
        for d in dists:
            for t in range(targets):
                p = 10 ** rng.uniform(-8, -4)
                for meth in methods_:
                    q = p * 10 ** rng.normal(0, 0.5)
                    rows.append({"model": m, "dist": d, "target": t, "truth": p, "method": meth, "budget": 64,
                                 "estimate": q, "cost": 64})
    return rows


def test_calibration_folds_keep_each_distribution_group_whole():
    from interplab.experiments.lpe_figures import calibrate, calibration_folds, score

    scored = score(_fake_scored(), 1e-12)
    half = calibration_folds(scored, seed=3)
    assert set(half) == {(m, d) for m in ("1L", "2L") for d in "abc"}  # one fold per group, not per target
    for m in ("1L", "2L"):
        assert {half[(m, d)] for d in "abc"} == {0, 1}  # each model has groups in both folds
    out = calibrate(scored, seed=3)
    assert len(out) == len(scored) and all(np.isfinite(r["is_loss_fitted"]) for r in out)
    # a model with a single group is fitted on the other fold pooled over models, not left as identity
    one = score(_fake_scored(models=("1L",), dists=("a",)) + _fake_scored(models=("2L",)), 1e-12)
    fitted = [r for r in calibrate(one, seed=0) if r["model"] == "1L"]
    assert any(r["q_fitted"] != pytest.approx(r["q"]) for r in fitted)


def test_cluster_bootstrap_resamples_groups():
    from interplab.experiments.lpe_figures import cluster_bootstrap_ci

    # two groups of 50 identical values: the target-level bootstrap would give a tiny CI; resampling
    # groups gives [0, 1] (either group twice, or both)
    values = np.array([0.0] * 50 + [1.0] * 50)
    low, high = cluster_bootstrap_ci(values, ["g0"] * 50 + ["g1"] * 50, seed=0)
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)
    low, high = cluster_bootstrap_ci(values, list(range(100)), seed=0)
    assert 0.35 < low < 0.5 < high < 0.65


def test_verdicts_use_fixed_representatives_and_skip_over_budget_cells():
    from types import SimpleNamespace

    from interplab.experiments.lpe import LPEConfig, _over_budget
    from interplab.experiments.lpe_figures import calibrate, loss_table, score, verdicts

    rows = _fake_scored(methods_=("naive", "itgis", "mhis", "qld", "gld"))
    scored = calibrate(score(rows, 1e-12), seed=0)
    cfg = SimpleNamespace(budgets=[64], seed=0, is_representative="mhis", extrapolation_representative="gld")
    vs = verdicts(scored, cfg, ("qld", "gld"), ("naive", "itgis", "mhis"))
    assert len(vs) == 3 and "mhis vs gld" in vs[0].note and "fixed in advance" in vs[0].note
    assert all(v.ci[0] <= v.statistic <= v.ci[1] for v in vs)
    assert LPEConfig().is_representative == "itgis" and LPEConfig().extrapolation_representative == "qld"
    metrics = {"1L": {"propagate": {}}, "over_budget": _over_budget(
        [{"model": "1L", "method": "propagate", "budget": 64, "cost": 99.0}])}
    table = loss_table(metrics, SimpleNamespace(budgets=[64]))
    assert table["rows"] == [["1L", "propagate", None, None, None, None, "64"]]


def test_too_few_groups_give_no_verdict():
    from types import SimpleNamespace

    from interplab.experiments.lpe_figures import calibrate, score, verdicts

    rows = _fake_scored(models=("1L",), methods_=("naive", "itgis", "qld"))
    for r in rows:  # itgis exact: it wins on every target of all three groups
        if r["method"] == "itgis":
            r["estimate"] = r["truth"]
    scored = calibrate(score(rows, 1e-12), seed=0)
    cfg = SimpleNamespace(budgets=[64], seed=0, is_representative="itgis", extrapolation_representative="qld")
    vs = verdicts(scored, cfg, ("qld",), ("naive", "itgis"))
    assert vs[0].verdict == "inconclusive" and "too few" in vs[0].note
