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
    """Mean over seeds within 4 standard errors of the exact truth on a tiny random chartf model. ITGIS at
    the published T = 1: at the tuned T = 0.1 its proposal concentrates so hard that a few event inputs
    get weights far above the rest and are drawn in far fewer than 150 runs, so the sample mean of 150
    runs sits below P (heavy tail, still unbiased: the planted-key test checks T = 0.1 where the
    weights are bounded)."""
    problem = _rare_case()
    truth = float(event_probs(problem.model, problem.dists)[problem.target])
    if method == "naive":
        ests = np.array([estimate(problem, method, budget, seed).probability for seed in range(seeds)])
    else:
        ests = np.array([methods.itgis_trace(problem, budget, seed, 1.0).at(budget)[0] for seed in range(seeds)])
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


def test_gld_extrapolates_a_gaussian_margin_far_below_the_sampling_floor():
    """Two outputs whose logit difference is an exactly Gaussian function of Gaussian activations:
    P = Phi(-4.75) ~ 1e-6 is 1000x below 1/n, naive sampling sees nothing, GLD's fitted tail is
    within a factor 1.5 (the sampling error of the fitted mean and sd at n = 1024)."""
    rng = np.random.default_rng(0)
    W, b = np.array([[1.0, 0.5], [0.0, 0.0]]), np.array([0.0, 0.0])  # margin = x1 + x2 / 2
    sd = np.hypot(1.0, 0.5)
    mean = -4.75 * sd  # P(margin > 0) = Phi(-4.75)
    truth = norm.sf(4.75)
    ests, hits = [], 0
    for _ in range(20):
        acts = rng.standard_normal((1024, 2)) + np.array([mean, 0.0])  # (n, d)
        hits += int(((acts @ W.T + b).argmax(1) == 0).sum())  # naive sampling's hits
        ests.append(extrapolate.gld_from_acts(acts, W, b, 0))
    assert hits <= 1
    assert np.median(ests) == pytest.approx(truth, rel=0.5)
    assert all(truth / 5 < e < 5 * truth for e in ests)


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("budget", [50, 700, 20000])
def test_budget_respected(method, budget, quiet_single_thread):
    from interplab.errors import UserError

    model = tiny_model(3)
    problem = Problem(model, skewed_dists(4, 6, 0.5), target=7)
    try:
        est = estimate(problem, method, budget, seed=0)
    except UserError:
        assert method == "propagate" and budget < 20000  # its fixed cost may not fit a small budget
        return
    assert 0 < est.cost <= budget and est.probability >= 0.0


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
    """The rules compose correctly: the propagated Gaussian of the unembedding input has the exact mean
    (within 0.25 sd per unit) and sd (within 25%, median) of the enumerated inputs; its argmax events
    partition the space; the registry method returns the per-target estimate and its cost. (The event
    probabilities themselves are off by decades on rare targets: docs/lpe.md, bench/lpe_propagate.py.)"""
    from interplab.lpe.groundtruth import _chunks
    from interplab.lpe.propagate import final_state, propagate_all

    model = tiny_model(4, n_layers=2)
    dists = skewed_dists(4, 6, 0.6)
    state = final_state(model, dists)
    H, w = [], []
    with torch.no_grad():
        for ids, lp in _chunks(dists, 4096):
            H.append(model.body(model.embed(ids))[:, -1].double())  # (b, d)
            w.append(lp.exp())
    H, w = torch.cat(H), torch.cat(w)
    mu = (w[:, None] * H).sum(0)  # (d,) exact
    sd = (w[:, None] * (H - mu) ** 2).sum(0).sqrt()  # (d,) exact
    assert float(((state.mean[-1] - mu).abs() / sd).max()) < 0.25
    assert abs(float((state.cov[-1].diagonal().sqrt() / sd).median()) - 1) < 0.25
    probs, cost = propagate_all(model, dists, n=1024)
    assert abs(probs.sum() - 1) < 0.1 and cost > 0  # the argmax events partition the space
    top = int(event_probs(model, dists).argmax())
    est = estimate(Problem(model, dists, top), "propagate", budget=10**6, seed=0)
    alone, cost_alone = propagate_all(model, dists, [top])
    assert est.probability == pytest.approx(alone[top]) and est.cost == cost_alone


# --- planted problems: exact truth by construction --------------------------------------------------


def test_planted_models_agree_on_both_paths_and_truths_match_their_construction(quiet_single_thread, tmp_cache):
    from interplab.lpe.planted import planted_groups

    key, cone, phase = (planted_groups(f, 1, seed=3, p_max=1e-4)[0] for f in ("key", "cone", "phase"))
    for g in (key, cone, phase):
        ids = Problem(g.model, g.dists, g.targets[0]).sample(16, torch.Generator().manual_seed(0))  # (16, L)
        onehot = torch.nn.functional.one_hot(ids, g.model.vocab_size).float()
        torch.testing.assert_close(g.model.forward_onehot(onehot), g.model(ids))
    probs = event_probs(key.model, key.dists)
    for k, t in enumerate(key.targets):  # p = product over positions of the key token's probability
        keyed = key.model.emb[:, :, k].argmax(1)  # (L,) the key token at each position
        assert float(probs[t]) == pytest.approx(float(key.dists[torch.arange(4), keyed].prod()), rel=1e-9)
    for t in cone.targets:
        assert 1e-6 / 2 < float(event_probs(cone.model, cone.dists)[t]) < 0.5e-4 * 2
    phase_probs = event_probs(phase.model, phase.dists)
    assert all(2e-3 <= float(phase_probs[t]) <= 0.2 for t in phase.targets)


def _key_problem(p_range=(5e-7, 2e-6), seed=11) -> tuple[Problem, float]:
    from interplab.lpe.planted import key_group

    g = key_group(seed, p_range=p_range)
    probs = event_probs(g.model, g.dists)
    t = min(g.targets, key=lambda t: abs(np.log10(float(probs[t])) + 6))  # the target nearest 1e-6
    return Problem(g.model, g.dists, t), float(probs[t])


def test_itgis_finds_a_planted_spike_that_naive_sampling_misses(quiet_single_thread, tmp_cache):
    """A target that fires only when every position holds its key token, p ~ 1e-6: ITGIS with the
    experiment's settings is within a factor 2 at 4096 forward-pass equivalents on every seed."""
    from interplab.experiments.lpe import LPEConfig

    cfg = LPEConfig()
    problem, truth = _key_problem()
    assert 3e-7 < truth < 3e-6
    assert estimate(problem, "naive", 4096, seed=0).probability == 0.0
    for seed in range(5):
        est = methods.itgis_trace(problem, 4096, seed, cfg.itgis_temperature, score=cfg.itgis_score,
                                  decay=cfg.itgis_decay).at(4096)[0]
        assert truth / 2 < est < 2 * truth, (seed, est, truth)


@pytest.mark.parametrize("settings", [{}, {"temperature": 1.0, "score": "logit", "decay": 0.9},
                                      {"temperature": 0.3, "score": "logprob", "decay": 1.0}])
def test_itgis_is_unbiased_on_a_planted_key(settings, quiet_single_thread, tmp_cache):
    """Unbiased for any proposal fixed before each batch: the mean over seeds is within 4 standard errors
    (a small budget, so that early, unconverged batches are a large share of every run). p ~ 1e-2, so
    that the first batch (drawn from p itself) hits often enough for its share to show in 80 seeds: for
    p ~ 1e-5 it almost never hits, and the sample mean misses its (rare, large) share of the expectation."""
    problem, truth = _key_problem(p_range=(5e-3, 2e-2), seed=5)
    ests = np.array([methods.itgis_trace(problem, 600, s, **settings).at(600)[0] for s in range(80)])
    se = ests.std(ddof=1) / np.sqrt(len(ests))
    assert se > 0 and abs(ests.mean() - truth) < 4 * se, (ests.mean(), truth, se)


def test_mhis_is_consistent_on_a_rare_event_at_the_experiments_temperature(quiet_single_thread, tmp_cache):
    """Self-normalised, so consistent rather than unbiased: on the planted spike (p ~ 1e-4) the mean over
    seeds at the tuned temperature is within 4 standard errors of the truth, and no seed is off by 10x."""
    from interplab.experiments.lpe import LPEConfig

    cfg = LPEConfig()
    problem, truth = _key_problem(p_range=(5e-5, 2e-4), seed=7)
    ests = np.array([methods.mhis_trace(problem, 6000, s, cfg.mhis_temperature).at(6000)[0] for s in range(30)])
    se = ests.std(ddof=1) / np.sqrt(len(ests))
    assert abs(ests.mean() - truth) < 4 * se + 0.05 * truth, (ests.mean(), truth, se)


def test_qld_sees_below_the_floor_where_its_independence_holds(quiet_single_thread, tmp_cache):
    """The planted cone: a nearly Gaussian activation, so a = u.d and b are independent and QLD's n^2
    pairs estimate p ~ 1e-5..1e-4 from n = 2048 (p n < 0.25) within a factor 2.5 in most runs."""
    from interplab.lpe.planted import cone_group

    g = cone_group(2, p_range=(1e-5, 1e-4))
    probs = event_probs(g.model, g.dists)
    W, b = extrapolate.unembedding(g.model)
    for t in g.targets:
        ratios = np.array([extrapolate.qld_from_acts(methods.sample_final(Problem(g.model, g.dists, t), 2048, s)[0]
                                                      .double().numpy(), W, b, t) for s in range(8)]) / float(probs[t])
        assert np.mean((ratios > 0.4) & (ratios < 2.5)) >= 0.75, ratios


# --- scoring, calibration, evidence -----------------------------------------------------------------


def test_is_loss_closed_form_and_its_asymmetry():
    from interplab.experiments.lpe_scoring import is_loss

    assert float(is_loss(2e-6, 1e-6)) == pytest.approx(2 - np.log(2) - 1)
    assert float(is_loss(1e-6, 2e-6)) == pytest.approx(0.5 + np.log(2) - 1)
    assert float(is_loss(3e-9, 3e-9)) == 0.0
    assert float(is_loss(1e-6, 1e-8)) > 20 * float(is_loss(1e-6, 1e-4))  # 100x under costs 94, 100x over 3.6


def test_fitted_maps_undo_a_planted_distortion_and_zero_level_is_is_optimal():
    from interplab.experiments.lpe_scoring import fit_map, fit_zero_level, is_loss

    rng = np.random.default_rng(0)
    lp = rng.uniform(-9, -5, 200)
    lq = (lp - 0.7) / 1.3  # estimates that are a known affine distortion of the truth in log10 space
    alpha, beta = fit_map(lq, lp)
    assert alpha == pytest.approx(1.3, abs=1e-3) and beta == pytest.approx(0.7, abs=1e-3)
    c = fit_zero_level(lp)  # the best constant estimate under the IS loss
    grid = np.linspace(c - 1, c + 1, 201)
    losses = [float(np.mean(is_loss(10**lp, 10**g))) for g in grid]
    assert grid[int(np.argmin(losses))] == pytest.approx(c, abs=0.011)


def _rows(groups=("g0", "g1", "g2", "g3"), methods_=("naive", "qld"), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g in groups:
        for t in range(3):
            p = 10 ** rng.uniform(-8, -5)
            for m in methods_:
                q = 0.0 if m == "naive" else p * 10 ** rng.normal(0, 0.3)
                rows.append({"group": g, "model": "m", "dist": g, "target": t, "truth": p, "method": m,
                             "budget": 64, "estimate": q, "cost": 64})
    return rows


def test_calibration_of_a_group_never_sees_that_group():
    from interplab.experiments.lpe_scoring import calibrate, score

    rows = _rows()
    base = {(r["group"], r["target"], r["method"]): r["q_fitted"] for r in calibrate(score(rows, 1e-12))}
    moved = [{**r, "truth": r["truth"] * 50} if r["group"] == "g0" else r for r in rows]  # g0's truths only
    after = calibrate(score(moved, 1e-12))
    for r in after:
        if r["group"] == "g0":
            assert r["q_fitted"] == pytest.approx(base[(r["group"], r["target"], r["method"])])
    # naive's zeros become the held-out groups' IS-optimal constant, not the floor through a map
    naive = [r for r in after if r["method"] == "naive" and r["group"] == "g1"]
    assert len({round(r["q_fitted"], 20) for r in naive}) == 1 and naive[0]["q_fitted"] > 1e-9


def test_log_statistic_bounds_one_targets_weight():
    from interplab.experiments.lpe_scoring import pairwise_evidence

    rows = []
    for g in range(6):
        for t in range(4):  # 'a' beats 'b' on every target by a little, except one target where 'a' blunders
            la, lb = (30.0 if (g, t) == (0, 0) else 0.1), 1.0
            rows += [{"group": f"g{g}", "target": t, "method": m, "budget": 8, "is_loss": v, "is_loss_fitted": v}
                     for m, v in (("a", la), ("b", lb))]
    plain, logged = (pairwise_evidence(rows, "a", "b", 8, transform=f) for f in ("loss", "log1p"))
    assert plain.ci[0] < 0 < plain.ci[1]  # one target's loss of 30 outweighs 23 small wins: the CI straddles 0
    assert logged.ci[0] > 0  # log(1 + loss) keeps the 23 wins visible
    assert logged.extra["wins"] == plain.extra["wins"] == 23


def test_pairwise_evidence_resamples_groups_and_reads_the_sign():
    from interplab.experiments.lpe_scoring import calibrate, pairwise_evidence, score

    scored = calibrate(score(_rows(groups=[f"g{i}" for i in range(8)]), 1e-12))
    ev = pairwise_evidence(scored, "qld", "naive", 64)
    assert ev.n_units == 8 and ev.extra["targets"] == 24 and ev.ci[0] > 0  # qld close, naive a constant
    back = pairwise_evidence(scored, "naive", "qld", 64)
    assert back.statistic == pytest.approx(-ev.statistic) and back.ci[1] < 0
    # two groups: the cluster bootstrap's interval spans both groups' means, not the targets'
    two = pairwise_evidence([r for r in scored if r["group"] in ("g0", "g1")], "qld", "naive", 64)
    per = two.extra["per_group"]
    assert two.ci[0] == pytest.approx(min(per), rel=0.05) and two.ci[1] == pytest.approx(max(per), rel=0.05)


# --- controls and the experiment --------------------------------------------------------------------


def test_controls_read_as_designed_through_the_pipeline(tmp_cache, quiet_single_thread):
    """Every crux: its planted positive control reads supported and its negative control does not, through
    the same pipeline, at the small scale's budgets and six groups."""
    from interplab.experiments.lpe import LPE, LPEConfig
    from interplab.experiments.lpe_controls import control_evidence
    from interplab.verdicts import decide

    cfg = LPEConfig(**LPE.small)
    controls = control_evidence(cfg, 6)
    assert set(controls) == {f"lpe-{c}{s}" for c in ("is-vs-ae", "is-vs-naive", "ae-vs-naive") for s in ("", "-log")}
    for crux, ev in controls.items():
        assert decide(ev["positive"].ci, 0.0) == "supported", (crux, ev["positive"])
        assert decide(ev["negative"].ci, 0.0) != "supported", (crux, ev["negative"])
        assert ev["positive"].n_units == 6


def test_experiment_end_to_end_on_tiny_settings(tmp_path, tmp_cache, text_folder):
    import json

    from interplab.experiments import run_experiment

    overrides = {"layers": [1], "distributions": ["capitals", "hex", "mixed"], "positions": 3,
                 "budgets": [256, 1024], "train_steps": 20, "max_targets": 3, "controls": True,
                 "text": str(text_folder)}
    run_experiment("lpe", overrides, tmp_path, scale="default")
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["metrics"]["1L"]) == {"naive", "itgis", "mhis", "qld", "gld", "propagate"}
    cell = data["metrics"]["1L"]["itgis"]["1024"]
    assert {"is_loss", "log_se", "is_loss_fitted", "log_se_fitted", "floored"} <= set(cell)
    assert all(p * 1024 < 1 for *_, p in data["tables"]["targets"]["rows"])  # below the floor throughout
    ids = {f"lpe-{c}{s}" for c in ("is-vs-ae", "is-vs-naive", "ae-vs-naive") for s in ("", "-log")}
    assert {v["crux"] for v in data["verdicts"]} == ids
    assert data["metrics"]["controls"] == {}  # 3 groups < MIN_GROUPS: the controls are not run, so nothing counts
    for v in data["verdicts"]:  # the superseded definitions are shown as such
        assert v["status"] == ("uncalibrated" if v["crux"].endswith("-log") else "superseded")
    assert (tmp_path / "figures" / "scatter.png").is_file()


def test_config_refuses_tuning_distributions_bad_budgets_and_missing_representatives():
    from pydantic import ValidationError

    from interplab.experiments.lpe import LPEConfig

    with pytest.raises(ValidationError, match="tuning"):
        LPEConfig(distributions=["hex", "lower"])
    with pytest.raises(ValidationError):
        LPEConfig(budgets=[1024, 2])
    with pytest.raises(ValidationError, match="p_low"):
        LPEConfig(p_low=1e-3)
    with pytest.raises(ValidationError, match="representatives"):
        LPEConfig(methods=["naive", "qld"])


@pytest.mark.parametrize("method, minimum", [("itgis", 3), ("mhis", 6)])
def test_sequential_methods_refuse_a_budget_below_one_step(method, minimum, quiet_single_thread):
    from interplab.errors import UserError

    problem = Problem(tiny_model(3), skewed_dists(4, 6, 0.5), target=7)
    with pytest.raises(UserError, match=f"at least {minimum}"):
        estimate(problem, method, minimum - 1, seed=0)
    assert estimate(problem, method, minimum, seed=0).cost > 0
