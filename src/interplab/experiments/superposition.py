"""Toy Models of Superposition reproduced: intro figure, phase diagram, feature geometry, neuron model.

Every part trains its instances as ONE batched `tms` model (a leading instance dimension).

- Intro: 5 features in 2 dims across densities (`superposition_intro`'s training and figures).
- Phase diagram: 2 features in 1 dim, ReLU output, importance (1, r), density s on log grids
  (r in [0.1, 10], s in [0.01, 1]); `phase_seeds` instances per cell, the lowest evaluation loss kept.
  Each cell is classified from W (1, 2): *superposition* (both |W_i| > 0.5 with opposite signs,
  the antipodal pair), *dedicated* (only feature 2, the one whose relative importance is r), *dropped*
  (only feature 1), otherwise *other*. The closed form (reference): antipodal iff
  s < 4r/(2+5r) for r <= 1, s < 4/(5+2r) for r >= 1; else dropped (r < 1) or dedicated (r > 1).
  Agreement is over cells farther than `boundary_margin` decades from the boundary (in s, and in r
  from r = 1 where the dedicated and dropped phases meet).
- Geometry: n features in m dims at equal importance across densities: D* = m / ||W||_F^2 against
  1/(1-S), and the feature dimensionalities D_i (clusters at 1, 3/4, 2/3, 1/2, 2/5, 3/8).
- Neuron model: 10 features, 5 ReLU neurons, importance 0.75^i, across densities: the fraction of
  polysemantic neurons (1a's statistic, `interplab.metrics.hypotheses`) and the weights.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import Field

from interplab import ui
from interplab.config import Config
from interplab.experiments import superposition_intro as intro
from interplab.experiments import superposition_controls as planted
from interplab.experiments.base import Experiment, Result, Verdict, register
from interplab.experiments.superposition_figures import (
    STICKY,
    geometry_figure,
    neuron_figure,
    phase_figure,
)
from interplab.metrics import hypotheses as H
from interplab.metrics.bootstrap import resample
from interplab.verdicts import Evidence, bootstrap_units, from_boots, from_refits, judge

PHASES = ("dropped", "dedicated", "superposition")  # class ids 0, 1, 2; -1 = other
REPRESENTED = 0.5


class SuperpositionConfig(Config):
    """Settings of the `superposition` experiment (defaults follow the paper where it gives them)."""

    intro_steps: int = Field(10_000, ge=1)
    """Training steps of the intro figure's models (5 features in 2 dims)."""
    intro_seeds: int = Field(4, ge=1)
    """Instances per density of the intro figure."""
    phase_grid: int = Field(16, ge=2)
    """Grid points along r and along s of the phase diagram (the issue asks for at least 12)."""
    phase_seeds: int = Field(4, ge=1)
    """Instances per phase-diagram cell; the lowest evaluation loss is kept."""
    phase_steps: int = Field(10_000, ge=1)
    """Training steps of the phase-diagram models."""
    phase_batch_size: int = Field(1024, ge=1)
    """Batch size of the phase-diagram models."""
    boundary_margin: float = Field(0.1, ge=0)
    """Cells within this many decades of the closed-form boundary are left out of the agreement."""
    geo_features: int = Field(200, ge=2)
    """Features of the geometry study (equal importance)."""
    geo_hidden: int = Field(20, ge=1)
    """Hidden dimensions of the geometry study."""
    geo_densities: int = Field(16, ge=2)
    """Densities of the geometry study, log-spaced from 1 down to `geo_min_density`."""
    geo_min_density: float = Field(0.01, gt=0, lt=1)
    """Sparsest density of the geometry study."""
    geo_steps: int = Field(10_000, ge=1)
    """Training steps of the geometry models."""
    geo_batch_size: int = Field(1024, ge=1)
    """Batch size of the geometry models."""
    neuron_densities: int = Field(10, ge=2)
    """Densities of the neuron model, log-spaced from 1 down to `neuron_min_density`."""
    neuron_min_density: float = Field(0.01, gt=0, lt=1)
    """Sparsest density of the neuron model."""
    neuron_seeds: int = Field(4, ge=2)
    """Instances per density of the neuron model (the bootstrap unit of its verdict)."""
    neuron_steps: int = Field(10_000, ge=1)
    """Training steps of the neuron model (the dense end needs ~10k to become monosemantic)."""
    seed: int = 0
    """Seed of every training run and bootstrap."""


def _train(n: int, m: int, variant: str, density: list[float], steps: int, batch: int, seed: int,
           importance: list[list[float]] | None = None, decay: float = 1.0) -> Any:
    from interplab.subjects import load_subject

    kwargs: dict[str, Any] = {"importance": importance} if importance is not None else {"importance_decay": decay}
    return load_subject("tms", n_features=n, n_hidden=m, variant=variant, density=density, steps=steps,
                        batch_size=batch, seed=seed, **kwargs).model


# --- phase diagram ------------------------------------------------------------------------------
def closed_form_threshold(r: np.ndarray) -> np.ndarray:
    """Density below which the antipodal pair beats both single-feature solutions (exact, reference)."""
    r = np.asarray(r, dtype=float)
    return np.where(r <= 1, 4 * r / (2 + 5 * r), 4 / (5 + 2 * r))


def predicted_phase(r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Closed-form class (R, S) for importance ratios r (R,) and densities s (S,)."""
    rr, ss = np.meshgrid(r, s, indexing="ij")  # (R, S)
    return np.where(ss < closed_form_threshold(rr), 2, np.where(rr < 1, 0, 1))


def classify(W: np.ndarray, threshold: float = REPRESENTED) -> np.ndarray:
    """Observed class of each (..., 1, 2) weight matrix: 0 dropped, 1 dedicated, 2 superposition, -1 other."""
    w = W[..., 0, :]  # (..., 2)
    rep = np.abs(w) > threshold  # (..., 2)
    anti = rep[..., 0] & rep[..., 1] & (w[..., 0] * w[..., 1] < 0)
    only1, only2 = rep[..., 0] & ~rep[..., 1], rep[..., 1] & ~rep[..., 0]
    return np.select([anti, only1, only2], [2, 0, 1], default=-1)


def near_boundary(r: np.ndarray, s: np.ndarray, margin: float) -> np.ndarray:
    """Cells (R, S) within `margin` decades of the closed-form boundary."""
    rr, ss = np.meshgrid(r, s, indexing="ij")  # (R, S)
    near_s = np.abs(np.log10(ss) - np.log10(closed_form_threshold(rr))) < margin
    near_r = (np.abs(np.log10(rr)) < margin) & (ss >= closed_form_threshold(rr) * 10 ** -margin)
    return near_s | near_r


class Phase(NamedTuple):
    r: np.ndarray  # (R,)
    s: np.ndarray  # (S,)
    observed: np.ndarray  # (R, S) class of the lowest-loss seed
    predicted: np.ndarray  # (R, S)
    compared: np.ndarray  # (R, S) bool, outside the margin
    W: np.ndarray  # (R, S, 2) weights of the kept seed


def phase_diagram(grid: int, seeds: int, steps: int, batch: int, margin: float, seed: int) -> Phase:
    r, s = np.logspace(-1, 1, grid), np.logspace(-2, 0, grid)
    cells = [(ri, sj) for ri in r for sj in s for _ in range(seeds)]  # r-major, then s, then seed
    ui.info(f"superposition: phase diagram, {len(cells)} instances of 2 features in 1 dim")
    model = _train(2, 1, "relu", [float(c[1]) for c in cells], steps, batch, seed,
                   importance=[[1.0, float(c[0])] for c in cells])
    W = model.W.detach().numpy().reshape(grid, grid, seeds, 1, 2)  # (R, S, K, 1, 2)
    best = model.final_loss.numpy().reshape(grid, grid, seeds).argmin(-1)  # (R, S)
    kept = np.take_along_axis(W, best[..., None, None, None], 2)[:, :, 0]  # (R, S, 1, 2)
    return Phase(r, s, classify(kept), predicted_phase(r, s), ~near_boundary(r, s, margin), kept[:, :, 0])


def phase_evidence(observed: np.ndarray, predicted: np.ndarray, compared: np.ndarray, seed: int) -> Evidence:
    """Agreement of observed with closed-form classes over the compared cells, bootstrap over cells,
    against the share of the most common observed class (a constant prediction)."""
    agree = (observed == predicted)[compared].astype(float)  # (cells,)
    counts = np.bincount(observed[compared] + 1, minlength=4)
    null = float(counts.max() / max(1, counts.sum()))
    return bootstrap_units(agree, null, f"bootstrap over {agree.size} cells", seed=seed)


def phase_verdict(p: Phase, seed: int, scale: str) -> Verdict:
    """tms-phase on the trained grid, with the closed-form weights (positive) and the same weights on
    permuted cells (negative) classified and scored by the same functions."""
    good = planted.closed_form_weights(p.predicted)  # (R, S, 1, 2)
    pos = phase_evidence(classify(good), p.predicted, p.compared, seed)
    neg = phase_evidence(classify(planted.permuted_cells(good, seed + 1)), p.predicted, p.compared, seed)
    ev = phase_evidence(p.observed, p.predicted, p.compared, seed)
    return judge("tms-phase", ev, f"tms relu 2→1, {len(p.r)}x{len(p.s)} grid", pos, neg, scale,
                 note=f"agreement over {int(p.compared.sum())} cells more than the margin from the boundary")


# --- geometry -----------------------------------------------------------------------------------
class Geometry(NamedTuple):
    density: np.ndarray  # (D,)
    d_star: np.ndarray  # (D,)
    dims: np.ndarray  # (D, n) feature dimensionalities
    represented: np.ndarray  # (D, n) bool, ||W_i|| > REPRESENTED
    hidden: int = 0  # m, the hidden dimensions


def geometry(cfg: SuperpositionConfig) -> Geometry:
    dens = np.logspace(0, np.log10(cfg.geo_min_density), cfg.geo_densities)
    ui.info(f"superposition: geometry, {cfg.geo_features} features in {cfg.geo_hidden} dims")
    model = _train(cfg.geo_features, cfg.geo_hidden, "relu", [float(d) for d in dens], cfg.geo_steps,
                   cfg.geo_batch_size, cfg.seed, decay=1.0)
    W = model.W.detach().double()  # (D, m, n)
    d_star = np.array([H.dims_per_feature(w) for w in W])
    dims = torch.stack([H.feature_dimensionality(w) for w in W]).numpy()  # (D, n)
    return Geometry(dens, d_star, dims, (W.norm(dim=1) > REPRESENTED).numpy(), W.shape[1])


STICKY_RANGE = (0.3, 1.0)  # round-1 range: the sticky list down to 3/8, with D_i = 1 included
FRACTIONAL_RANGE = (0.3, 0.9)  # tms-sticky: features in superposition only (D_i = 1 is a dedicated dim)
WIDTH = 0.03  # "near" a sticky value


def sticky_share(width: float, lo: float = STICKY_RANGE[0], hi: float = STICKY_RANGE[1],
                 values: tuple[float, ...] = STICKY) -> float:
    """Share of [lo, hi] within `width` of one of `values`: what uniform D_i there would give (exact up
    to the grid step)."""
    grid = np.linspace(lo, hi, 200_001)
    return float((np.abs(grid[:, None] - np.array(values)[None]) <= width).any(1).mean())


def _near(d: np.ndarray, values: tuple[float, ...], width: float) -> np.ndarray:
    return (np.abs(d[..., None] - np.array(values)) <= width).any(-1)


def sticky_evidence(dims: np.ndarray, represented: np.ndarray, seed: int, width: float = WIDTH) -> Evidence:
    """tms-sticky's statistic on weights of D models: share of represented features with D_i in
    FRACTIONAL_RANGE near a fractional sticky value; cluster bootstrap over the models."""
    lo, hi = FRACTIONAL_RANGE
    values = planted.sticky_values()
    keep = represented & (dims >= lo) & (dims <= hi)  # (D, n)
    per_model = {"near": (keep & _near(dims, values, width)).sum(1).astype(float),  # (D,)
                 "n": keep.sum(1).astype(float)}  # (D,)
    total = per_model["n"].sum()
    stat = per_model["near"].sum() / total if total else float("nan")
    boots = resample(per_model, lambda st: st["near"] / np.where(st["n"] > 0, st["n"], np.nan), 2000, seed)
    return from_boots(stat, boots, sticky_share(width, lo, hi, values),
                      f"cluster bootstrap over {dims.shape[0]} models ({int(total)} features in range)",
                      n_units=dims.shape[0])


def sticky_d1_evidence(dims: np.ndarray, represented: np.ndarray, seed: int, width: float = WIDTH) -> Evidence:
    """The round-1 form (tms-sticky-d1): D_i in [0.3, 1], 1 included, bootstrap over pooled features."""
    d = dims[represented & (dims >= STICKY_RANGE[0])]  # (features,)
    return bootstrap_units(_near(d, STICKY, width).astype(float), sticky_share(width),
                           f"bootstrap over {d.size} pooled features (optimistic)", seed=seed)


def _planted_geometry(weights: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    W = torch.stack(weights).double()  # (D, m, n)
    dims = torch.stack([H.feature_dimensionality(w) for w in W]).numpy()  # (D, n)
    return dims, (W.norm(dim=1) > REPRESENTED).numpy()


def geometry_verdicts(g: Geometry, seed: int, scale: str) -> list[Verdict]:
    """tms-sticky (and its round-1 form) on the trained models; controls: as many planted models of
    sticky polytopes (positive) and of random columns (negative), scored by the same functions."""
    D, n = g.dims.shape
    m = g.hidden
    pos = _planted_geometry([planted.polytope_weights(m, n, seed + i) for i in range(D)])
    neg = _planted_geometry([planted.random_weights(m, n, seed + 100 + i) for i in range(D)])
    subject = f"tms relu {n} features in {m} dims, equal importance, {D} densities"
    return [
        judge("tms-sticky", sticky_evidence(g.dims, g.represented, seed), subject,
              sticky_evidence(*pos, seed), sticky_evidence(*neg, seed), scale),
        judge("tms-sticky-d1", sticky_d1_evidence(g.dims, g.represented, seed), subject,
              sticky_d1_evidence(*pos, seed), sticky_d1_evidence(*neg, seed), scale),
    ]


# --- neuron model -------------------------------------------------------------------------------
class Neurons(NamedTuple):
    density: np.ndarray  # (D,)
    poly: np.ndarray  # (D, K) fraction of polysemantic live neurons per instance
    W: np.ndarray  # (D, m, n) weights of the lowest-loss instance per density
    pr: np.ndarray  # (D, K) median PR of live neurons per instance (1a's activation mass)
    W_all: np.ndarray  # (D, K, m, n) every instance's weights


def neuron_model(cfg: SuperpositionConfig) -> Neurons:
    dens = np.logspace(0, np.log10(cfg.neuron_min_density), cfg.neuron_densities)
    K = cfg.neuron_seeds
    ui.info(f"superposition: neuron model, {len(dens) * K} instances")
    model = _train(10, 5, "neuron", [float(d) for d in dens for _ in range(K)], cfg.neuron_steps, 1024, cfg.seed,
                   decay=0.75)
    W = model.W.detach().double()  # (D*K, m, n)
    mom = model.density.double().unsqueeze(1) / 3 * torch.ones(1, 10)  # (D*K, n) E[x_i^2] = p/3
    stats = [H.neuron_polysemanticity(w.T, m, rectified=True) for w, m in zip(W, mom)]
    poly = np.array([st.fraction for st in stats])
    pr = np.array([st.median for st in stats])
    best = model.final_loss.numpy().reshape(len(dens), K).argmin(-1)  # (D,)
    Wk = W.numpy().reshape(len(dens), K, *W.shape[1:])[np.arange(len(dens)), best]  # (D, m, n)
    return Neurons(dens, poly.reshape(len(dens), K), Wk, pr.reshape(len(dens), K),
                   W.numpy().reshape(len(dens), K, *W.shape[1:]))


def neuron_evidence(dense: list[torch.Tensor], sparse: list[torch.Tensor]) -> Evidence:
    """tms-neuron's statistic: per seed, median PR of live neurons (activation mass, positive weights)
    of the sparsest model minus that of the dense one; t interval over seeds. W (m, n) per seed;
    every feature is given the same second moment (it cancels in the PR within one model)."""
    def median_pr(W: torch.Tensor) -> float:
        return H.neuron_polysemanticity(W.T, torch.ones(W.shape[1], dtype=torch.float64), rectified=True).median

    diff = [median_pr(s) - median_pr(d) for d, s in zip(dense, sparse)]  # (K,)
    return from_refits(diff, 0.0, f"t interval over {len(diff)} training seeds")


def neuron_verdict(nm: Neurons, seed: int, scale: str) -> Verdict:
    """tms-neuron on the trained instances; controls: planted monosemantic weights at density 1
    against neurons mixing 3 features at the sparsest (positive), monosemantic at both (negative),
    as many planted seeds as trained ones."""
    W = torch.from_numpy(nm.W_all)  # (D, K, m, n)
    K, m, n = W.shape[1:]

    def mix(per: int, i: int) -> torch.Tensor:
        return torch.from_numpy(planted.mixing_weights(m, n, per, seed + i))

    pos = neuron_evidence([mix(1, i) for i in range(K)], [mix(3, K + i) for i in range(K)])
    neg = neuron_evidence([mix(1, i) for i in range(K)], [mix(1, K + i) for i in range(K)])
    ev = neuron_evidence(list(W[0]), list(W[-1]))
    return judge("tms-neuron", ev, f"tms neuron model {n}→{m}, importance 0.75^i", pos, neg, scale,
                 note=f"median PR of live neurons at density {nm.density[-1]:.3g} minus at density 1, per seed "
                 f"({K} seeds)")


# --- experiment ---------------------------------------------------------------------------------
@register
class Superposition(Experiment):
    """Toy Models of Superposition: intro figure, 2-in-1 phase diagram, geometry, neuron model."""

    name = "superposition"
    order = 2
    title = "Toy Models of Superposition reproduced: phase diagram, geometry, neuron model"
    Config = SuperpositionConfig
    small: ClassVar[dict[str, Any]] = {"intro_steps": 3000, "phase_grid": 12, "phase_steps": 2000, "phase_batch_size": 256,
             "geo_features": 100, "geo_hidden": 10, "geo_densities": 8, "geo_steps": 3000, "geo_batch_size": 256,
             "neuron_densities": 6, "neuron_seeds": 3}

    def run(self, cfg: SuperpositionConfig) -> Result:
        icfg = intro.IntroConfig(steps=cfg.intro_steps, seeds=cfg.intro_seeds, seed=cfg.seed)
        t = intro.train(icfg)
        ist = intro.stats(t, icfg.threshold)
        best = t.loss.argmin(axis=1)
        p = phase_diagram(cfg.phase_grid, cfg.phase_seeds, cfg.phase_steps, cfg.phase_batch_size,
                             cfg.boundary_margin, cfg.seed)
        g = geometry(cfg)
        nm = neuron_model(cfg)
        verdicts = [phase_verdict(p, cfg.seed, self.scale), *geometry_verdicts(g, cfg.seed, self.scale),
                    neuron_verdict(nm, cfg.seed, self.scale)]
        agree = verdicts[0].statistic
        summary = (f"Phase diagram: {agree:.0%} of {int(p.compared.sum())} cells agree with the closed form. "
                   f"Geometry: D* from {g.d_star[0]:.2f} (dense) to {g.d_star[-1]:.2f} (density "
                   f"{g.density[-1]:.2g}). Neuron model: median features per neuron {nm.pr[0].mean():.2f} at "
                   f"density 1, {nm.pr[-1].mean():.2f} at {nm.density[-1]:.2g}.")
        return Result(
            experiment=self.name, title=self.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
            metrics=_metrics(p, g, nm, intro.metrics(t, ist, best)), verdicts=verdicts,
            tables={"phase_agreement": _phase_table(p)},
            figures={"intro_geometry": intro.geometry_figure(t, best, intro._importance(5, icfg.importance_decay)),
                     "phase_diagram": phase_figure(p), "feature_geometry": geometry_figure(g),
                     "neuron_model": neuron_figure(nm)},
            captions={
                "intro_geometry": "5 features in 2 dims, dense (left) to sparse (right): columns W_i, WᵀW, bias.",
                "phase_diagram": "2 features in 1 dim. Left: phase of the lowest-loss instance per cell (x: disagrees "
                "with the closed form; dots: within the margin of the boundary, not scored). Right: closed form. "
                "Black line: s = 4r/(2+5r) (r <= 1), 4/(5+2r) (r >= 1), and r = 1.",
                "feature_geometry": "Dimensions per feature D* = m/||W||²_F against 1/(1−S), and every feature's "
                "D_i (represented features, ||W_i|| > 0.5); red dotted lines: the sticky values 1, 3/4, 2/3, 1/2, 2/5, 3/8.",
                "neuron_model": "Top: median features per live neuron (PR of activation mass), per seed (grey) "
                "and mean. Bottom: W (neurons x features) of the lowest-loss instance per density.",
                "phase_agreement": "Observed against closed-form phase over the scored cells."},
            summary=summary)


def _phase_table(p: Phase) -> dict[str, list]:
    names = ["other", *PHASES]
    rows = []
    for pred in range(3):
        sel = p.compared & (p.predicted == pred)
        rows.append([PHASES[pred], *[int(((p.observed == o) & sel).sum()) for o in (-1, 0, 1, 2)]])
    return {"columns": ["closed form \\ observed", *names], "rows": rows}


def _metrics(p: Phase, g: Geometry, nm: Neurons, intro_metrics: dict[str, Any]) -> dict[str, Any]:
    agree = (p.observed == p.predicted)[p.compared]
    return {
        "intro": intro_metrics,
        "phase": {"agreement": float(agree.mean()), "cells_scored": int(p.compared.sum()),
                  "cells_total": int(p.compared.size), "r": p.r, "s": p.s,
                  "observed": p.observed, "predicted": p.predicted},
        "geometry": {"density": g.density, "dims_per_feature": g.d_star,
                     "features_represented": g.represented.sum(1),
                     "median_feature_dimensionality": [float(np.median(d[r])) if r.any() else 0.0
                                                       for d, r in zip(g.dims, g.represented)]},
        "neuron_model": {"density": nm.density, "median_pr_mean": nm.pr.mean(1), "median_pr": nm.pr,
                         "polysemantic_fraction_mean": nm.poly.mean(1),
                         "polysemantic_fraction": nm.poly},
    }
