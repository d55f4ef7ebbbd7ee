"""Fit and score every mad detector on 100k activations of width 576, against the same detector written
with scikit-learn (or numpy/scipy where scikit-learn has no such estimator), side by side.

    python bench/mad_detectors.py                 # 100k x 576, one thread each side
    python bench/mad_detectors.py --rows 20000    # quicker
    python bench/mad_detectors.py --only mahalanobis,pca-residual

Each line: seconds to fit on the rows and score the same rows, for interplab and for the peer, the
ratio peer / interplab (> 1: interplab is faster) and the largest relative difference of the scores
(the peer is the same detector, so the scores must agree; the SAE rows are different models and are
compared by time only, and scikit-learn's dictionary learning runs on --sae-peer-rows rows, its time
scaled up linearly to all rows; the isolation forests draw different subsamples). Both sides run on one thread (torch and BLAS), as `interplab cruxes` does.
Peers:
- mahalanobis, attribution: sklearn.covariance.LedoitWolf().fit(X).mahalanobis(X)
- pca-residual: sklearn.decomposition.PCA(k).fit(X), ||X - inverse_transform(transform(X))||²
- sae-recon: sklearn.decomposition.MiniBatchDictionaryLearning with OMP codes of the same sparsity k,
  one pass over the rows (the nearest scikit-learn has to a sparse autoencoder)
- isolation-forest: sklearn.ensemble.IsolationForest on the rows as given
- explain-cov, explain-mean: scipy.stats.multivariate_normal(mean, cov).logpdf (no scikit-learn estimator
  takes given moments)
- entropy, max-logit: numpy/scipy (softmax entropy, max, sorted two-sided tail)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from interplab import mad, ui
from interplab.estimate import Gaussian
from interplab.runtime import single_thread


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a decaying spectrum in a random basis (activation-like), and logits of width d."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (rng.normal(size=(n, d)) * (1.0 / np.sqrt(1 + np.arange(d)))) @ Q + rng.normal(size=d)
    return X, 3 * rng.normal(size=(n, d))


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, np.asarray(out, dtype=np.float64)


def peer(name: str, X: np.ndarray, L: np.ndarray, moments: tuple[np.ndarray, np.ndarray], k_pca: int,
         sae: dict) -> Callable[[], np.ndarray]:
    """The scikit-learn (numpy/scipy) version of detector `name`, fitting on and scoring X (or L)."""
    from scipy.special import log_softmax
    from scipy.stats import multivariate_normal
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA, MiniBatchDictionaryLearning
    from sklearn.ensemble import IsolationForest

    def two_sided(trusted: np.ndarray, t: np.ndarray) -> np.ndarray:
        s = np.sort(trusted)
        below = (np.searchsorted(s, t, side="right") + 1) / (len(s) + 1)
        above = (len(s) - np.searchsorted(s, t, side="left") + 1) / (len(s) + 1)
        return -np.log(np.minimum(1.0, 2 * np.minimum(below, above)))

    def pca() -> np.ndarray:
        p = PCA(n_components=k_pca).fit(X)
        return ((X - p.inverse_transform(p.transform(X))) ** 2).sum(1)

    def dictionary() -> np.ndarray:
        batch = sae["batch_size"]
        dl = MiniBatchDictionaryLearning(n_components=sae["expansion"] * X.shape[1], batch_size=batch,
                                         max_iter=1, transform_algorithm="omp",
                                         transform_n_nonzero_coefs=sae["k"], random_state=0).fit(X)
        return ((X - dl.transform(X) @ dl.components_) ** 2).sum(1)

    def entropy_of(logits: np.ndarray) -> np.ndarray:
        lp = log_softmax(logits, axis=1)
        return -(np.exp(lp) * lp).sum(1)

    mean, cov = moments
    return {
        "mahalanobis": lambda: LedoitWolf().fit(X).mahalanobis(X),
        "attribution": lambda: LedoitWolf().fit(X).mahalanobis(X),
        "pca-residual": pca,
        "sae-recon": dictionary,
        "isolation-forest": lambda: -IsolationForest(random_state=0).fit(X).score_samples(X),
        "explain-cov": lambda: -multivariate_normal(mean, cov).logpdf(X),
        "explain-mean": lambda: -multivariate_normal(mean, np.diag(np.diag(cov))).logpdf(X),
        "entropy": lambda: two_sided(entropy_of(L), entropy_of(L)),  # fit on the rows, then score them
        "max-logit": lambda: two_sided(L.max(1), L.max(1)),
    }[name]


def ours(name: str, views: mad.Views, k_pca: int, sae: dict) -> Callable[[], np.ndarray]:
    site = "" if name in ("entropy", "max-logit") else "x"
    opts = {"pca-residual": {"n_components": k_pca}, "sae-recon": sae, "sae-novelty": sae}.get(name, {})
    args = {"site": site} if site else {}
    return lambda: mad.create(name, **args, **opts).fit(views).score(views)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--only", default="", help="comma-separated detector names (default: every detector)")
    ap.add_argument("--sae-peer-rows", type=int, default=2_000,
                    help="rows for scikit-learn's dictionary learning (tens of seconds per 1000 rows on one thread)")
    args = ap.parse_args()
    ui.set_quiet(True)
    X, L = data(args.rows, args.width)
    rng = np.random.default_rng(1)
    mean, cov = X.mean(0) + 0.1 * rng.normal(size=args.width), np.cov(X.T, bias=True)  # given moments
    Xt = torch.from_numpy(X)
    explained = {"cov": {"x": Gaussian(torch.from_numpy(mean), torch.from_numpy(cov))},
                 "mean": {"x": Gaussian(torch.from_numpy(mean), var=torch.from_numpy(np.diag(cov).copy()))}}
    views = mad.Views(acts={"x": Xt}, logits=torch.from_numpy(L), grads={"x": Xt}, explained=explained)
    sae = {"k": 16, "expansion": 1, "batch_size": 1024, "steps": max(1, args.rows // 1024)}  # one pass
    k_pca = args.width // 8
    names = [n for n in mad.DETECTORS.names() if n != "sae-novelty"]  # novelty shares sae-recon's fit
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    print(f"# {args.rows} x {args.width} float64 rows; one thread; {platform.processor() or platform.machine()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'detector':18s} {'interplab s':>12s} {'peer s':>9s} {'peer/ours':>10s} {'max rel diff':>13s}")
    with single_thread():
        small = mad.Views(acts={"x": Xt[:500]}, logits=views.logits[:500], grads={"x": Xt[:500]}, explained=explained)
        for name in names:  # warm-up: imports and first calls stay out of the timings
            ours(name, small, k_pca, {**sae, "steps": 2})()
            if name != "sae-recon":
                peer(name, X[:500], L[:500], (mean, cov), k_pca, sae)()
        for name in names:
            t_ours, s_ours = timed(ours(name, views, k_pca, sae))
            rows = args.rows
            if name == "sae-recon":  # scikit-learn's dictionary learning is too slow for every row
                rows = min(rows, args.sae_peer_rows)
                t_peer, s_peer = timed(peer(name, X[:rows], L[:rows], (mean, cov), k_pca,
                                            {**sae, "batch_size": sae["batch_size"]}))
                t_peer *= args.rows / rows
                rel = f"(its {rows} rows x {args.rows / rows:g})" if rows < args.rows else "(different model)"
            else:
                t_peer, s_peer = timed(peer(name, X, L, (mean, cov), k_pca, sae))
                diff = np.max(np.abs(s_ours - s_peer) / np.maximum(np.abs(s_peer), 1e-12))
                rel = "(other subsamples)" if name == "isolation-forest" else f"{diff:.1e}"
            print(f"{name:18s} {t_ours:12.2f} {t_peer:9.2f} {t_peer / t_ours:10.2f} {rel:>13s}", flush=True)


if __name__ == "__main__":
    main()
