"""interplab.estimate: closed forms, exactness where it must hold, Monte Carlo agreement, FLOPs by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import gamma, norm
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


def _gamma_state(n: int, c: float) -> Gaussian:
    """X = Gamma(n, 1) - c (a sum of n unit exponentials, shifted): k1 = n - c, var = n, k3 = 2n, k4 = 6n."""
    return Gaussian(torch.tensor([n - c]), var=torch.tensor([float(n)]), k3=torch.tensor([2.0 * n]),
                    k4=torch.tensor([6.0 * n]))


def test_heaviside_edgeworth_tail_against_the_exact_gamma_tail() -> None:
    """P(X > 0) for a skewed X (a shifted Gamma(10)) from its first four cumulants: the Edgeworth-corrected
    Heaviside mean must be closer to the exact tail than the Gaussian one at every threshold (the
    corrections have the right signs), and close in absolute terms (Edgeworth's CDF error is O(n^-3/2);
    measured max 1.03e-3 over these thresholds)."""
    n = 10
    for c in (4.0, 7.0, 10.0, 13.0, 16.0, 20.0):
        g = _gamma_state(n, c)
        exact = gamma.sf(c, n)
        edgeworth = float(rules.heaviside(g).mean)
        gaussian = float(rules.heaviside(Gaussian(g.mean, var=g.var)).mean)
        assert gaussian == pytest.approx(norm.sf(c, loc=n, scale=math.sqrt(n)), rel=1e-10)
        assert abs(edgeworth - exact) < abs(gaussian - exact), c
        assert abs(edgeworth - exact) < 2e-3, c


def test_relu_edgeworth_mean_against_the_exact_gamma_closed_form() -> None:
    """E[(X)_+] for X = Gamma(n) - c has the closed form n·P(Gamma(n+1) > c) - c·P(Gamma(n) > c). The
    Edgeworth-corrected ReLU mean must beat the Gaussian one by at least 2x (its error is O(1/n) against
    O(1/sqrt n), a ratio of ~1/sqrt(10) at n = 10) and stay within 5e-3 of it."""
    n = 10
    for c in (4.0, 10.0, 16.0):
        g = _gamma_state(n, c)
        exact = n * gamma.sf(c, n + 1) - c * gamma.sf(c, n)
        edgeworth = float(rules.relu(g).mean)
        gaussian = float(rules.relu(Gaussian(g.mean, var=g.var)).mean)
        assert abs(edgeworth - exact) < 0.5 * abs(gaussian - exact), c
        assert abs(edgeworth - exact) < 5e-3, c


@pytest.mark.parametrize("method", ["mean", "cov", "cumulant"])
def test_mlp_first_layer_is_the_relu_closed_form(method: str) -> None:
    """On N(0, I) inputs the first hidden layer of the mlp subject (biases on) is ReLU of N(b, |W_i|^2)
    unit by unit, so every method must give mu·Phi(a) + s·phi(a) and the matching variance (computed
    here with scipy from the subject's weights), and the next pre-activation mean W1 E[h0] + b1 exactly."""
    from interplab.subjects.base import load_subject

    for seed in range(3):
        subject = load_subject("mlp", width=16, depth=3, seed=seed, bias=True, bias_std=1.0)
        lin0, lin1 = subject.model.linear0, subject.model.linear1
        mu, s = lin0.bias.detach().numpy(), lin0.weight.detach().norm(dim=1).numpy()
        a = mu / s
        mean = mu * norm.cdf(a) + s * norm.pdf(a)
        var = (mu**2 + s**2) * norm.cdf(a) + mu * s * norm.pdf(a) - mean**2
        est = estimate_mean(subject, Gaussian.standard(16), method)
        assert est.means["hidden.0"].numpy() == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert est.variances["hidden.0"].numpy() == pytest.approx(var, rel=1e-9, abs=1e-12)
        want = lin1.weight.detach().numpy() @ mean + lin1.bias.detach().numpy()
        assert est.means["linear1"].numpy() == pytest.approx(want, rel=1e-9, abs=1e-12)


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
    encode = torch.einsum("bin,imn->bim", x.double(), subject.model.W.detach().double())  # (n, inst, m) W x
    for method in ("mean", "cov", "cumulant"):
        est = estimate_mean(subject, x, method)
        assert est.means["hidden"].shape == (2, 3) and est.means["out"].shape == (2, 5)
        # the moment-matched input goes through the (linear) encoder exactly, per instance
        assert est.means["encode"] == pytest.approx(encode.mean(0), abs=1e-12)
        W2 = subject.model.W.detach().double().square()  # (inst, m, n)
        var = (W2 @ x.double().var(0).unsqueeze(-1)).squeeze(-1) if method == "mean" else encode.var(0)  # (inst, m)
        assert est.variances["encode"] == pytest.approx(var, rel=1e-9)  # `mean` presumes independent features
        if method == "cov":
            cov = torch.stack([torch.cov(encode[:, i].T) for i in range(2)])  # (inst, m, m)
            assert est.states["encode"].cov == pytest.approx(cov, rel=1e-9, abs=1e-12)


def test_rare_event_network_against_a_large_sample() -> None:
    """P(unit fires) for a ReLU layer then a thresholded linear read-out (true rates 0 to 0.16, two near
    1e-3), against 2^19 direct forward passes of the nn.Sequential. Monte Carlo must agree within 4 SE.
    Each propagation method must give the tail its own closure predicts from the sampled moments of the
    read-out (Gaussian with the true mean and variance for `cov`; with the variance of independent hidden
    units for `mean`; Edgeworth with independent-unit k3, k4 for `cumulant`), within a delta-method
    tolerance for the sampling error of those moments. (How far these closures are from the true rate,
    up to 9x here, is the estimators experiment's question, not a property to pin in a unit test.)"""
    torch.manual_seed(15)
    last = nn.Linear(8, 4)
    nn.init.constant_(last.bias, -0.5)
    net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), last, Heaviside())
    N = 1 << 19
    x = torch.randn(N, 8, generator=torch.Generator().manual_seed(16))  # (N, 8)
    with torch.no_grad():
        h = net[1](net[0](x)).numpy()  # (N, 8)
        z = net[2](torch.from_numpy(h)).numpy()  # (N, 4)
    p = (z > 0).mean(0)  # (4,)
    mc = estimate_mean(net, Gaussian.standard(8), "montecarlo", n_samples=1 << 14, seed=3).means["3"].numpy()
    se = np.sqrt(p * (1 - p) * (1 / (1 << 14) + 1 / N))
    assert np.all(np.abs(mc - p) <= 4 * se + 1 / (1 << 14)), (mc, p)

    W = last.weight.detach().numpy()  # (4, 8)
    hc = h - h.mean(0)
    m, s = z.mean(0), z.std(0)
    s_indep = np.sqrt((W**2 * h.var(0)).sum(1))
    g1 = (W**3 * (hc**3).mean(0)).sum(1) / s**3
    g2 = (W**4 * ((hc**4).mean(0) - 3 * (hc**2).mean(0) ** 2)).sum(1) / s**4
    a = m / s
    he2, he3, he5 = a * a - 1, a**3 - 3 * a, a**5 - 10 * a**3 + 15 * a
    edgeworth = norm.cdf(a) + norm.pdf(a) * (g1 / 6 * he2 - g2 / 24 * he3 - g1 * g1 / 72 * he5)
    for method, want, a_used in (("cov", norm.cdf(a), a), ("mean", norm.cdf(m / s_indep), m / s_indep),
                                 ("cumulant", edgeworth, a)):
        got = estimate_mean(net, Gaussian.standard(8), method).means["3"].numpy()
        tol = 5 * np.abs(a_used) * (1 + np.abs(a_used)) / math.sqrt(N) + 1e-3  # d log Phi(a) = phi/Phi da
        assert np.all(np.abs(got / want - 1) < tol), (method, got / want, tol)


def test_user_errors() -> None:
    with pytest.raises(UserError, match="no propagation rule"):
        estimate_mean(nn.Sequential(nn.Conv1d(1, 1, 1)), Gaussian.standard(1), "mean")
    with pytest.raises(UserError, match="has no option"):
        estimate_mean(nn.Sequential(nn.ReLU()), Gaussian.standard(2), "mean", n_samples=3)
    with pytest.raises(UserError, match="unknown estimator"):
        estimate_mean(nn.Sequential(nn.ReLU()), Gaussian.standard(2), "magic")
