"""Anomaly detectors: the shared contract, agreement with scikit-learn, and the scoring metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interplab import mad
from interplab.errors import UserError
from interplab.estimate import Gaussian
from interplab.mad.mahalanobis import Mahalanobis

FAST = {"sae-recon": {"steps": 40, "batch_size": 64}, "sae-novelty": {"steps": 40, "batch_size": 64},
        "isolation-forest": {"n_estimators": 20}}


def views(n: int, d: int = 6, seed: int = 0, shift: float = 0.0) -> mad.Views:
    """Random correlated rows at two sites, logits, gradients, and an explanation of the first site."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) @ A + shift  # (n, d)
    logits = torch.randn(n, 5, generator=g, dtype=torch.float64) * 2 + shift
    cov = A.T @ A
    explained = {"cov": {"a": Gaussian(torch.zeros(d, dtype=torch.float64), cov)},
                 "mean": {"a": Gaussian(torch.zeros(d, dtype=torch.float64), var=torch.diagonal(cov).clone())}}
    return mad.Views(acts={"a": X, "b": X[:, :3] ** 2}, logits=logits, grads={"a": X.flip(1)}, explained=explained)


def detector(name: str) -> mad.Detector:
    site = {"entropy": "", "max-logit": ""}.get(name, "a")
    return mad.create(name, site=site, **FAST.get(name, {})) if site else mad.create(name, **FAST.get(name, {}))


@pytest.mark.parametrize("name", mad.DETECTORS.names())
def test_score_is_invariant_to_the_order_of_trusted_rows(name: str, quiet_single_thread) -> None:
    trusted, test = views(300), views(50, seed=1, shift=0.5)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    a = detector(name).fit(trusted).score(test)
    b = detector(name).fit(trusted.take(perm)).score(test)
    assert a.shape == (50,) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", mad.DETECTORS.names())
def test_shifted_inputs_score_higher(name: str, quiet_single_thread) -> None:
    """Every detector flags rows moved far from the trusted ones (activations, gradients and logits
    all moved; the explanation describes the unshifted rows exactly)."""
    if name == "entropy":
        pytest.skip("adding a constant to every logit leaves the output distribution as it was")
    if name == "sae-novelty":
        pytest.skip("a TopK SAE fires k latents on every input; a shift along common latents is not novel")
    det = detector(name).fit(views(400))
    assert mad.auroc(det.score(views(200, seed=1)), det.score(views(200, seed=2, shift=6.0))) > 0.9


def test_contract_errors() -> None:
    with pytest.raises(UserError, match="needs a site"):
        mad.create("mahalanobis")
    with pytest.raises(UserError, match="not fitted"):
        mad.create("mahalanobis", site="a").score(views(5))
    with pytest.raises(UserError, match="reads site 'zz'"):
        mad.create("mahalanobis", site="zz").fit(views(5))
    with pytest.raises(UserError, match="unknown detector"):
        mad.create("mahalanobos", site="a")
    with pytest.raises(UserError, match="needs the distribution"):
        mad.create("explain-cov", site="b").fit(views(20))
    assert mad.create("entropy").site == mad.OUTPUT_SITE


@pytest.mark.parametrize("shrinkage", ["ledoit-wolf", "oas", "none", 0.3])
def test_mahalanobis_matches_scikit_learn(shrinkage) -> None:
    from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf, ShrunkCovariance

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)) + 3.0  # correlated, off-centre
    Y = rng.normal(size=(50, 12)) * 2
    ref = {"ledoit-wolf": LedoitWolf(), "oas": OAS(), "none": EmpiricalCovariance(),
           0.3: ShrunkCovariance(shrinkage=0.3)}[shrinkage].fit(X)
    det = Mahalanobis(site="a", shrinkage=shrinkage).fit(mad.Views(acts={"a": torch.from_numpy(X)}))
    ours = det.score(mad.Views(acts={"a": torch.from_numpy(Y)}))
    np.testing.assert_allclose(ours, ref.mahalanobis(Y), rtol=1e-6)
    if shrinkage in ("ledoit-wolf", "oas"):
        assert det.shrinkage_ == pytest.approx(ref.shrinkage_, rel=1e-9)


def test_mahalanobis_matches_scikit_learn_when_dimensions_outnumber_rows() -> None:
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(20, 40)), rng.normal(size=(10, 40))
    ours = Mahalanobis(site="a").fit(mad.Views(acts={"a": torch.from_numpy(X)})).score(mad.Views(acts={"a": torch.from_numpy(Y)}))
    np.testing.assert_allclose(ours, LedoitWolf().fit(X).mahalanobis(Y), rtol=1e-6)


def test_pca_residual_matches_scikit_learn() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10)), rng.normal(size=(40, 10))
    det = mad.create("pca-residual", site="a", n_components=4).fit(mad.Views(acts={"a": torch.from_numpy(X)}))
    pca = PCA(n_components=4).fit(X)
    ref = ((Y - pca.inverse_transform(pca.transform(Y))) ** 2).sum(1)
    np.testing.assert_allclose(det.score(mad.Views(acts={"a": torch.from_numpy(Y)})), ref, rtol=1e-6)


def test_explain_is_the_gaussian_negative_log_likelihood() -> None:
    from scipy.stats import multivariate_normal

    trusted, test = views(10), views(30, seed=4)
    g = trusted.explained["cov"]["a"]
    ref = -multivariate_normal(g.mean.numpy(), g.cov.numpy()).logpdf(test.acts["a"].numpy())
    np.testing.assert_allclose(mad.create("explain-cov", site="a").fit(trusted).score(test), ref, rtol=1e-6)
    var = trusted.explained["mean"]["a"].var.numpy()
    ref = -multivariate_normal(np.zeros(6), np.diag(var)).logpdf(test.acts["a"].numpy())
    np.testing.assert_allclose(mad.create("explain-mean", site="a").fit(trusted).score(test), ref, rtol=1e-6)


def test_output_detectors_are_two_sided() -> None:
    trusted = views(500)
    det = mad.create("max-logit").fit(trusted)
    mid = trusted.logits.max(-1).values.median()
    low = det.score(mad.Views(acts={}, logits=torch.full((1, 5), -50.0, dtype=torch.float64)))
    high = det.score(mad.Views(acts={}, logits=torch.full((1, 5), 50.0, dtype=torch.float64)))
    usual = det.score(mad.Views(acts={}, logits=torch.full((1, 5), float(mid), dtype=torch.float64)))
    assert low[0] > usual[0] + 3 and high[0] > usual[0] + 3


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_fpr_match_scikit_learn(ties: bool) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=300), rng.normal(0.7, 1.0, size=200)
    if ties:
        a, b = np.round(a), np.round(b)
    y = np.r_[np.zeros(a.size), np.ones(b.size)]
    s = np.r_[a, b]
    assert mad.auroc(a, b) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert mad.fpr_at_recall(a, b, 0.95) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    f, t = mad.roc_points(a, b)
    assert f[0] == t[0] == 0 and f[-1] == t[-1] == 1 and np.all(np.diff(f) >= 0)
