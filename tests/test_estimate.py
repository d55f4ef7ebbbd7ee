"""interplab.estimate: closed forms, exactness where it must hold, Monte Carlo agreement, FLOPs by hand."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from interplab.errors import UserError
from interplab.estimate import (
    ESTIMATORS,
    Gaussian,
    Heaviside,
    attention,
    embedding,
    estimate_mean,
    nonlin,
    rules,
)


@pytest.fixture(autouse=True)
def _float64():
    """Numerics are tested in float64; the default dtype is restored for other test modules."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _random_cov(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g)
    return A @ A.T / d + 0.1 * torch.eye(d)


def _within(est: torch.Tensor, mc_mean: torch.Tensor, mc_var: torch.Tensor, n: int, k: float = 5.0) -> None:
    se = (mc_var / n).sqrt() + 1e-12
    z = ((est - mc_mean) / se).abs().max()
    assert z < k, f"max |z| = {z:.2f}"


# ------------------------------------------------------------------ closed forms


def test_gaussian_moments_of_polynomials() -> None:
    six = nonlin.Nonlinearity("z6", lambda x: x**6, 6)
    H, _ = nonlin.table(six, torch.zeros(1), torch.ones(1), 1, 0)
    assert float(H[0, 0, 0]) == pytest.approx(15.0, rel=1e-10)
    H, _ = nonlin.table(nonlin.NONLINEARITIES["relu"], torch.zeros(1), torch.ones(1), 6, 0)
    assert H[0, :, 0].tolist() == pytest.approx([1 / math.sqrt(2 * math.pi), 0.5, 2 / math.sqrt(2 * math.pi),
                                                 1.5, 8 / math.sqrt(2 * math.pi), 7.5], rel=1e-10)


def test_relu_closed_form_agrees_with_quadrature_and_formula() -> None:
    mu, s = torch.tensor([-1.3, 0.0, 0.7, 2.5]), torch.tensor([0.5, 1.0, 2.0, 0.3])
    H, _ = nonlin.table(nonlin.NONLINEARITIES["relu"], mu, s, 2, 4)
    a = (mu / s).numpy()
    mean = mu.numpy() * norm.cdf(a) + s.numpy() * norm.pdf(a)
    second = (mu.numpy() ** 2 + s.numpy() ** 2) * norm.cdf(a) + mu.numpy() * s.numpy() * norm.pdf(a)
    assert H[:, 0, 0].numpy() == pytest.approx(mean, rel=1e-10)
    assert H[:, 1, 0].numpy() == pytest.approx(second, rel=1e-10)
    smooth = nonlin.Nonlinearity("softplus-ish", lambda x: torch.relu(x), 1)  # quadrature on the same f
    Hq, _ = nonlin.table(smooth, mu, s, 2, 4)
    assert Hq[..., 0].numpy() == pytest.approx(H[..., 0].numpy(), rel=5e-3, abs=1e-3)  # a kink converges slowly


def test_edgeworth_relu_matches_the_reference_formula() -> None:
    mu, s, g1, g2 = torch.tensor([0.4]), torch.tensor([1.3]), torch.tensor([0.5]), torch.tensor([0.8])
    H, _ = nonlin.table(nonlin.NONLINEARITIES["relu"], mu, s, 1, 6)
    got = nonlin.edgeworth_moments(H, g1, g2)[0, 0]
    a = float(mu / s)
    bracket = 1 - 0.5 * a / 6 + 0.8 * (a * a - 1) / 24 + 0.25 * (a**4 - 6 * a * a + 3) / 72
    want = 0.4 * norm.cdf(a) + 1.3 * norm.pdf(a) * bracket
    assert float(got) == pytest.approx(want, rel=1e-10)


# ------------------------------------------------------------------ exactness and Monte Carlo agreement


def _linear_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))


@pytest.mark.parametrize("method", ["mean", "cov", "cumulant"])
def test_linear_network_mean_is_exact(method: str) -> None:
    net, cov = _linear_net(0), _random_cov(5, 1)
    mu = torch.randn(5, generator=torch.Generator().manual_seed(2))
    est = estimate_mean(net, Gaussian(mu, cov), method)
    W = net[1].weight @ net[0].weight
    b = net[1].weight @ net[0].bias + net[1].bias
    assert est.means["1"].detach() == pytest.approx((W @ mu + b).detach(), abs=1e-12)
    if method == "cov":
        assert est.states["1"].cov == pytest.approx((W @ cov @ W.T).detach(), abs=1e-12)


def test_one_relu_layer_mean_exact_and_agrees_with_sampling() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    g = Gaussian(torch.randn(6) * 0.3, _random_cov(6, 4))
    mc = estimate_mean(net, g, "montecarlo", n_samples=1 << 17, seed=5, dtype=torch.float64)
    for method in ("cov", "cumulant"):  # `mean` drops the input correlations: exact only for a diagonal input
        est = estimate_mean(net, g, method)
        _within(est.means["1"], mc.means["1"], mc.variances["1"], mc.n_samples)
        _within(est.variances["1"], mc.variances["1"], 2 * mc.variances["1"] ** 2 + 1e-3, mc.n_samples)
    g = g.diagonal()
    mc = estimate_mean(net, g, "montecarlo", n_samples=1 << 17, seed=6, dtype=torch.float64)
    _within(estimate_mean(net, g, "mean").means["1"], mc.means["1"], mc.variances["1"], mc.n_samples)


def test_arccos_kernel_and_mehler_series_match_sampling() -> None:
    d = 4
    cov = _random_cov(d, 6)
    x = Gaussian(torch.zeros(d), cov).sample(1 << 18, torch.Generator().manual_seed(7))  # (n, d)
    emp = torch.cov(torch.relu(x).T)
    exact = rules.relu(Gaussian(torch.zeros(d), cov)).cov
    assert (exact - emp).abs().max() < 5 * 2 * float(cov.diagonal().max()) / math.sqrt(x.shape[0])
    series = rules.relu(Gaussian(torch.zeros(d) + 1e-300, cov), order=30, arccos=False).cov
    assert series == pytest.approx(exact, abs=2e-3)


def test_heaviside_is_a_probability_even_with_extreme_cumulants() -> None:
    g = Gaussian(torch.tensor([-3.0, 0.0, 2.0]), var=torch.ones(3), k3=torch.tensor([5.0, -5.0, 9.0]),
                 k4=torch.tensor([30.0, 30.0, -20.0]))
    p = rules.heaviside(g).mean
    assert bool(((p >= 0) & (p <= 1)).all())
    assert rules.heaviside(g.diagonal().__class__(g.mean, var=g.var)).mean.tolist() == pytest.approx(
        norm.cdf([-3.0, 0.0, 2.0]).tolist(), rel=1e-10)


@pytest.mark.parametrize("method", ["mean", "cov", "cumulant"])
def test_relu_means_are_non_negative(method: str) -> None:
    from interplab.subjects.base import load_subject

    for seed in range(3):
        subject = load_subject("mlp", width=16, depth=3, seed=seed)
        est = estimate_mean(subject, Gaussian.standard(16), method)
        for site in ("hidden.0", "hidden.1", "hidden.2"):
            assert bool((est.means[site] >= 0).all())


def test_deterministic_units_give_finite_states() -> None:
    cov = torch.diag(torch.tensor([1.0, 0.0, 0.0]))
    for name in ("relu", "gelu", "heaviside"):
        out = rules.elementwise(Gaussian(torch.tensor([0.0, 2.0, -1.0]), cov).with_cumulants(), name, order=4)
        assert bool(torch.isfinite(out.cov).all() and torch.isfinite(out.mean).all())
        fx = nonlin.NONLINEARITIES[name].fn(torch.tensor([2.0, -1.0]))
        assert out.mean[1:] == pytest.approx(fx, abs=1e-6)


def test_linearity_of_output_functionals() -> None:
    torch.manual_seed(8)
    body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    a, b = 2.5, -0.7
    head = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[a, b]]))
    g = Gaussian.standard(4)
    for method in ("mean", "cov", "cumulant"):
        y = estimate_mean(body, g, method).means["2"]
        z = estimate_mean(nn.Sequential(*body, head), g, method).means["3"]
        assert float(z) == pytest.approx(a * float(y[0]) + b * float(y[1]), abs=1e-12)


def test_cumulants_of_a_linear_map_of_independent_inputs() -> None:
    x = torch.distributions.Exponential(torch.tensor(1.0)).sample((1 << 18, 3))  # k3 = 2, k4 = 6
    W = torch.tensor([[1.0, -2.0, 0.5]])
    g = Gaussian(torch.ones(3), var=torch.ones(3), k3=torch.full((3,), 2.0), k4=torch.full((3,), 6.0))
    y = rules.linear(g, W)
    assert float(y.k3) == pytest.approx(2 * (1 - 8 + 0.125))
    fitted = Gaussian.fit(x @ W.T, full=False, cumulants=True)
    assert float(fitted.k3) == pytest.approx(float(y.k3), rel=0.1)


def test_smooth_nonlinearities_agree_with_sampling() -> None:
    g = Gaussian(torch.tensor([0.3, -1.0, 1.5]), var=torch.tensor([0.5, 2.0, 1.0]))
    x = g.sample(1 << 17, torch.Generator().manual_seed(9))  # (n, 3)
    for name in ("gelu", "silu", "tanh", "sigmoid"):
        y = nonlin.NONLINEARITIES[name].fn(x)
        out = rules.elementwise(g, name)
        _within(out.mean, y.mean(0), y.var(0), x.shape[0])


# ------------------------------------------------------------------ transformer parts


def test_residual_of_a_linear_block_is_exact() -> None:
    W = torch.randn(4, 4, generator=torch.Generator().manual_seed(10))
    cov = _random_cov(4, 11)
    out = rules.residual(Gaussian(torch.ones(4), cov), lambda s: rules.linear(s, W))
    M = torch.eye(4) + W
    assert out.cov == pytest.approx(M @ cov @ M.T, abs=1e-10)
    diag = rules.residual(Gaussian(torch.ones(4), cov).diagonal(), lambda s: rules.linear(s, W))
    assert diag.mean == pytest.approx(M @ torch.ones(4), abs=1e-12)


def test_embedding_moments_and_deterministic_attention() -> None:
    g = torch.Generator().manual_seed(12)
    V, d, seq, heads = 5, 4, 3, 2
    W_E = torch.randn(V, d, generator=g)
    probs = torch.softmax(torch.randn(seq, V, generator=g), -1)
    state = embedding(probs, W_E)
    want_cov = torch.einsum("sv,vi,vj->sij", probs, W_E, W_E) - state.mean[:, :, None] * state.mean[:, None, :]
    assert state.mean == pytest.approx(probs @ W_E, abs=1e-12)
    assert state.cov == pytest.approx(want_cov, abs=1e-12)
    mha = nn.MultiheadAttention(d, heads, bias=False, batch_first=True).double()
    Wq, Wk, Wv = mha.in_proj_weight.detach().chunk(3)
    x = torch.randn(seq, d, generator=g)
    mask = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    want = mha(x[None], x[None], x[None], attn_mask=mask)[0][0]
    got = attention(Gaussian(x, var=torch.zeros(seq, d)), Wq, Wk, Wv, mha.out_proj.weight.detach(), heads)
    assert got.mean == pytest.approx(want.detach(), abs=1e-10)
    assert got.variance.abs().max() == 0


def test_layernorm_first_order_is_close_for_small_noise() -> None:
    mu = torch.tensor([1.0, -2.0, 0.5, 3.0])
    g = Gaussian(mu, 1e-4 * _random_cov(4, 13))
    out = rules.layernorm(g)
    assert out.mean == pytest.approx(torch.nn.functional.layer_norm(mu, (4,)), abs=1e-3)
    x = g.sample(1 << 16, torch.Generator().manual_seed(14))
    y = torch.nn.functional.layer_norm(x, (4,))
    assert out.cov == pytest.approx(torch.cov(y.T), rel=0.1, abs=1e-6)


# ------------------------------------------------------------------ FLOPs, subjects, errors


def test_flops_of_a_small_network_by_hand() -> None:
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    g = Gaussian.standard(3)
    # mean: 2·4·3 + (4·3 + 2·4·3) | relu table 4·(12 + 4·2·2) + 3·4 | 2·2·4 + (2·4 + 2·2·4)
    assert estimate_mean(net, g, "mean").flops == 60 + 124 + 40
    # cov: 24 + 2·4·9 + 2·16·3 | 112 + 12 + arccos 12·16 + 2·4 | 16 + 2·2·16 + 2·4·4
    assert estimate_mean(net, g, "cov").flops == 192 + 324 + 112
    # montecarlo per sample: draw 2·3, linear 24, relu 4, linear 16, running sums 4 + 4 + 2
    assert estimate_mean(net, g, "montecarlo", n_samples=10).flops == 10 * 60


def test_tms_subject_with_samples() -> None:
    from interplab.subjects.base import load_subject
    from interplab.subjects.tms import sample_tms

    torch.set_default_dtype(torch.float32)
    subject = load_subject("tms", n_features=5, n_hidden=3, variant="neuron", density=[0.3, 0.1], steps=50)
    x = sample_tms(4096, subject.model.density, 5, torch.Generator().manual_seed(0))  # (n, inst, n)
    mc = estimate_mean(subject, x, "montecarlo", n_samples=4096)
    with torch.no_grad():
        want = subject.model(x).mean(0)  # (inst, n)
    assert mc.means["out"].float() == pytest.approx(want, abs=1e-5)
    for method in ("mean", "cov", "cumulant"):
        est = estimate_mean(subject, x, method)
        assert est.means["hidden"].shape == (2, 3) and est.means["out"].shape == (2, 5)
        assert bool((est.means["out"] >= 0).all())


def test_rare_event_network_gives_probabilities() -> None:
    torch.manual_seed(15)
    last = nn.Linear(8, 8)
    nn.init.constant_(last.bias, -3.0)
    net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), last, Heaviside())
    for method in ESTIMATORS:
        opts = {"n_samples": 256} if method == "montecarlo" else {}
        p = estimate_mean(net, Gaussian.standard(8), method, **opts).means["3"]
        assert bool(((p >= 0) & (p <= 1)).all())


def test_user_errors() -> None:
    with pytest.raises(UserError, match="no propagation rule"):
        estimate_mean(nn.Sequential(nn.Conv1d(1, 1, 1)), Gaussian.standard(1), "mean")
    with pytest.raises(UserError, match="has no option"):
        estimate_mean(nn.Sequential(nn.ReLU()), Gaussian.standard(2), "mean", n_samples=3)
    with pytest.raises(UserError, match="unknown estimator"):
        estimate_mean(nn.Sequential(nn.ReLU()), Gaussian.standard(2), "magic")
