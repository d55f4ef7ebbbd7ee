"""The loss-explained pipeline: one (subject, site) -> fitted decompositions -> loss curves -> evidence.

`run_study(study, cfg)` is the one pipeline every crux reads: the real subjects and the planted
controls go through it alike, and the `*_evidence` functions turn its result into each crux's
statistic with its CI (`interplab.verdicts.from_refits`: a t interval over SAE refits, plus the
sampling variance of the refits' mean over the shared scoring batches, from a paired batch
bootstrap, and for compute-equivalents over the ladder fit's parameters).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from interplab import ui
from interplab.decompose import DECOMPOSITIONS, create
from interplab.decompose.sae import SAEDecomposer
from interplab.errors import UserError
from interplab.metrics.compute import Ladder, LadderPoint, fit_ladder
from interplab.metrics.feature_basis import Basis
from interplab.metrics.loss_curve import LossCurve, Splits, boot_sums, draw_splits, fractions, loss_curves
from interplab.metrics.splice_batch import plain_loss
from interplab.store import harvest_rows
from interplab.subjects.base import Subject
from interplab.verdicts import Evidence, exact, from_refits

SAE = "sae-topk"  # the SAE of the verdicts; its refits are keyed "sae-topk#<seed offset>"


class Study(NamedTuple):
    """One (subject, site) and what every method there shares."""

    key: str
    subject: Subject
    site: str
    train: torch.Tensor  # (n, d) activations the decompositions are fitted on
    splits: Splits  # ranking and scoring inputs
    truth: Basis | None = None  # planted features, where known
    rungs: list[tuple[str, Subject, float]] | None = None  # (name, model, training FLOPs), the subject last
    neurons: bool = False  # whether the site has a neuron basis (MLP hidden layers)


class StudyResult(NamedTuple):
    key: str
    d: int
    curves: dict[str, LossCurve]
    refits: list[str]  # keys of the SAE refits in `curves`
    ladder: Ladder | None
    fit_seconds: dict[str, float]


def toy_study(key: str, subject: Subject, truth: Basis | None, cfg: Any,
              rungs: list[tuple[str, Subject, float]] | None = None) -> Study:
    """A toy's site `hidden` as a study: `cfg.toy_train_rows` training rows, splits of `cfg.toy_batch_size`."""
    rows = harvest_rows(subject, ["hidden"], cfg.toy_train_rows, cfg.seed, 4096, cached=False)["hidden"]
    rows = rows.reshape(rows.shape[0], -1)  # (n, d)
    splits = draw_splits(subject, cfg.rank_batches, cfg.score_batches, cfg.toy_batch_size, cfg.seed)
    return Study(key, subject, "hidden", rows, splits, truth, rungs)


def refit_key(i: int) -> str:
    return f"{SAE}#{i}"


def sae_settings(cfg: Any, d: int, seed: int) -> dict[str, Any]:
    width = cfg.width_factor * d if cfg.sae_max_width is None else min(cfg.width_factor * d, cfg.sae_max_width)
    return {"k": min(cfg.sae_k, d), "width": width, "steps": cfg.sae_steps,
            "batch_size": cfg.sae_batch_size, "lr": cfg.sae_lr, "seed": seed, "device": cfg.sae_device}


def fit_methods(study: Study, cfg: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Every decomposition of the study, fitted on its training rows (SAE refits by seed)."""
    import time

    d = study.train.shape[1]
    todo: dict[str, Callable[[], Any]] = {
        "pca": lambda: create("pca").fit(study.train),
        "pca-topk": lambda: create("pca", k=min(cfg.sae_k, d), sparsify="topk").fit(study.train),
        "random": lambda: create("random", seed=cfg.seed).fit(study.train),
    }
    if study.neurons:
        todo["identity"] = lambda: create("identity").fit(study.train)
    for name in cfg.extra_methods:
        if name != "ica" and not issubclass(DECOMPOSITIONS.get(name), SAEDecomposer):
            raise UserError(f"extra_methods takes 'ica' and SAE names, not '{name}' (PCA, random directions and "
                            "neurons are always run)")
        if name == "ica":
            todo["ica"] = lambda: create("ica", seed=cfg.seed, max_samples=cfg.ica_max_samples).fit(study.train)
        else:
            todo[name] = lambda name=name: create(name, **sae_settings(cfg, d, cfg.seed)).fit(study.train)
    for i in range(cfg.refits):
        todo[refit_key(i)] = lambda i=i: create(SAE, **sae_settings(cfg, d, cfg.seed + i)).fit(study.train)
    fitted, seconds = {}, {}
    with ui.progress(f"loss-explained {study.key}: fitting", len(todo)) as advance:
        for name, fn in todo.items():
            start = time.perf_counter()
            fitted[name] = fn()
            seconds[name] = time.perf_counter() - start
            advance(1, method=name)
    if study.truth is not None:
        fitted["truth"] = study.truth
    return fitted, seconds


def run_study(study: Study, cfg: Any) -> StudyResult:
    """THE pipeline: fit, rank and score every method on the study's splits, measure its ladder."""
    fitted, seconds = fit_methods(study, cfg)
    singles = {name: (0 if name == "pca-topk" else cfg.singles) for name in fitted}
    ns = {"pca-topk": [fitted["pca-topk"].n_components_]}
    ui.info(f"loss-explained {study.key}: scoring {len(fitted)} curves on {len(study.splits.score)} batches")
    curves = loss_curves(fitted, study.subject, study.site, ns, splits=study.splits, singles=singles,
                         singles_top=cfg.singles_top, seed=cfg.seed, max_rows=cfg.max_rows)
    ladder = measure_ladder(study.rungs, study.splits.score) if study.rungs else None
    refits = [refit_key(i) for i in range(cfg.refits)]
    return StudyResult(study.key, int(study.train.shape[1]), curves, refits, ladder, seconds)


def measure_ladder(rungs: list[tuple[str, Subject, float]], batches: list[torch.Tensor]) -> Ladder:
    """Each rung's loss on the scoring batches (as the curves measure it) and the fitted L(C)."""
    points = []
    for name, subject, flops in rungs:
        sums = np.array([plain_loss(subject, x) for x in batches])  # (n_batches, 2): loss sum, count
        per = sums[:, 0] / sums[:, 1]  # (n_batches,)
        se = float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else 0.0
        points.append(LadderPoint(name, float(flops), float(sums[:, 0].sum() / sums[:, 1].sum()), se))
    return fit_ladder(points, model_compute=rungs[-1][2])


# --- evidence ----------------------------------------------------------------------------------
Value = Callable[[dict[str, dict[str, np.ndarray]], str, np.ndarray | None], np.ndarray]


def refit_evidence(result: StudyResult, value: Value, fits: list[str], null: float, how: str, cfg: Any,
                   extra: dict[str, Any] | None = None) -> Evidence:
    """value(sums by method, fit, draw) over `fits`, with a t interval over them and the paired batch
    bootstrap's variance of their mean (each resample with its own draw of the ladder's parameters
    and of one model's scatter about the law; `draw` is None for the pooled value)."""
    pooled = {m: c.pooled() for m, c in result.curves.items()}
    boots = {m: boot_sums(c.batches, cfg.n_boot, cfg.seed) for m, c in result.curves.items()}
    theta = result.ladder.draws(cfg.n_boot, cfg.seed) if result.ladder is not None else None
    noise = result.ladder.loss_noise(cfg.n_boot, cfg.seed) if result.ladder is not None else None
    values = [float(value(pooled, f, None)) for f in fits]
    reps = np.mean([np.asarray(value(boots, f, (theta, noise)), dtype=float) for f in fits], axis=0)  # (n_boot,)
    reps = reps[np.isfinite(reps)]
    var = float(reps.var(ddof=1)) if reps.size > 1 else 0.0
    n_fits = "one fit" if len(fits) == 1 else f"{len(fits)} SAE refits"
    return from_refits(values, null, f"{how}; t over {n_fits} + batch-bootstrap variance", var,
                       {"fits": fits, **(extra or {})})


def _at(curve: LossCurve, n: int) -> int:
    return curve.ns.index(n)


def sae_pca_evidence(result: StudyResult, n: int, cfg: Any) -> Evidence | None:
    """frac(SAE, n) - frac(PCA, n) per refit (lx-sae-pca-n); None where d <= n."""
    if result.d <= n or "pca" not in result.curves or any(n not in result.curves[f].ns for f in result.refits):
        return None
    j_pca = _at(result.curves["pca"], n)

    def value(s: dict[str, dict[str, np.ndarray]], fit: str, _theta: Any) -> np.ndarray:
        sae = fractions(s[fit], "curve", "mean")[..., _at(result.curves[fit], n)]
        return sae - fractions(s["pca"], "curve", "mean")[..., j_pca]

    extra = {"frac_pca": float(fractions(result.curves["pca"].pooled(), "curve", "mean")[j_pca]),
             "frac_sae": [float(fractions(result.curves[f].pooled(), "curve", "mean")[_at(result.curves[f], n)])
                          for f in result.refits]}
    return refit_evidence(result, value, result.refits, 0.0, f"frac(SAE, {n}) - frac(PCA, {n})", cfg, extra)


def _median_share(s: dict[str, np.ndarray], curve: LossCurve) -> np.ndarray:
    rand = np.asarray(curve.singles_random, dtype=bool)
    if not rand.any():
        return np.asarray(np.nan)
    return np.median(fractions(s, "single", "mean")[..., rand], axis=-1)


def share_evidence(result: StudyResult, cfg: Any) -> Evidence | None:
    """max(m_SAE - 0.01, m_SAE - m_PCA) per refit (lx-share)."""
    if "pca" not in result.curves:
        return None

    def value(s: dict[str, dict[str, np.ndarray]], fit: str, _theta: Any) -> np.ndarray:
        m_sae = _median_share(s[fit], result.curves[fit])
        m_pca = _median_share(s["pca"], result.curves["pca"])
        return np.maximum(m_sae - 0.01, m_sae - m_pca)

    extra = {"median_share_pca": float(_median_share(result.curves["pca"].pooled(), result.curves["pca"])),
             "median_share_sae": [float(_median_share(result.curves[f].pooled(), result.curves[f]))
                                  for f in result.refits]}
    return refit_evidence(result, value, result.refits, 0.0, "max(m_SAE - 1%, m_SAE - m_PCA)", cfg, extra)


def compute_evidence(result: StudyResult, which: str, method: str, cfg: Any) -> Evidence | None:
    """log10(C_eq / C_model) of the reading at n = min(64, width) ("n64") or of the full
    reconstruction ("full"), for the SAE refits ("sae") or PCA ("pca": full-rank at n = 64 where
    d > 64; sign-split top-k for the full reconstruction)."""
    if result.ladder is None:
        return None
    if method == "sae":
        fits = result.refits
    elif which == "n64":
        fits = ["pca"] if result.d > 64 else []
    else:
        fits = ["pca-topk"]
    if not fits:
        return None
    ladder = result.ladder

    def value(s: dict[str, dict[str, np.ndarray]], fit: str, draw: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        curve, t = result.curves[fit], s[fit]
        if which == "n64":
            n = min(64, curve.width)
            loss = np.asarray(t["curve"])[..., _at(curve, n)] / np.asarray(t["n"])
        else:
            loss = np.asarray(t["recon"])[..., 0] / np.asarray(t["n"])
        if draw is None:
            return ladder.log10_fraction(loss)[0]
        theta, noise = draw  # the ladder's parameters and one model's scatter about the law, per resample
        return ladder.log10_fraction(loss + noise, theta)[0]

    how = "log10 C_eq/C_model at n = min(64, width)" if which == "n64" else "log10 C_eq/C_model of the full reconstruction"
    wheres = [int(ladder.log10_fraction(_reading_loss(result, f, which))[1]) for f in fits]
    return refit_evidence(result, value, fits, -2.0, how, cfg, {"where": wheres})


def _reading_loss(result: StudyResult, fit: str, which: str) -> float:
    curve = result.curves[fit]
    t = curve.pooled()
    if which == "n64":
        return float(t["curve"][_at(curve, min(64, curve.width))] / t["n"])
    return float(t["recon"][0] / t["n"])


def truth_evidence(result: StudyResult) -> Evidence | None:
    """frac(truth, K) (lx-truth), exact."""
    if "truth" not in result.curves:
        return None
    curve = result.curves["truth"]
    return exact(float(fractions(curve.pooled(), "curve", "mean")[_at(curve, curve.width)]), 0.999)
