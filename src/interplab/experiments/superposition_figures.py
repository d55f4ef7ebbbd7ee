"""Figures of the `superposition` experiment: phase diagram, feature geometry, neuron model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from interplab.experiments import superposition as sp

STICKY = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)

PHASE_COLOURS = ListedColormap(["0.8", "C0", "C1", "C3"])  # other, dropped, dedicated, superposition
PHASE_NORM = BoundaryNorm([-1.5, -0.5, 0.5, 1.5, 2.5], 4)


def phase_figure(p: sp.Phase) -> Figure:
    """Observed phase (lowest-loss seed) beside the closed form, both with the boundary drawn."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    from interplab.experiments.superposition import closed_form_threshold

    rr = np.logspace(-1, 1, 400)
    edges_r, edges_s = _edges(p.r), _edges(p.s)
    for ax, grid, title in ((axes[0], p.observed, "trained (lowest loss of the seeds)"),
                            (axes[1], p.predicted, "closed form")):
        mesh = ax.pcolormesh(edges_r, edges_s, grid.T, cmap=PHASE_COLOURS, norm=PHASE_NORM)
        ax.plot(rr, closed_form_threshold(rr), "k-", lw=1.2)
        ax.plot([1, 1], [closed_form_threshold(np.array(1.0)), 1], "k-", lw=1.2)
        ax.set(xscale="log", yscale="log", xlabel="relative importance r of feature 2", title=title)
    bad = (p.observed != p.predicted) & p.compared
    ri, sj = np.nonzero(bad)
    axes[0].plot(p.r[ri], p.s[sj], "kx", ms=6, label="disagrees")
    excl_r, excl_s = np.nonzero(~p.compared)
    axes[0].plot(p.r[excl_r], p.s[excl_s], ".", color="k", ms=2, label="near boundary (excluded)")
    axes[0].legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("density s = 1 − S")
    bar = fig.colorbar(mesh, ax=axes, ticks=[-1, 0, 1, 2])
    bar.ax.set_yticklabels(["other", "feature 2 dropped", "feature 2 dedicated", "antipodal superposition"])
    return fig


def _edges(v: np.ndarray) -> np.ndarray:
    lv = np.log10(v)
    step = lv[1] - lv[0]
    return 10 ** np.concatenate([lv - step / 2, lv[-1:] + step / 2])


def geometry_figure(g: sp.Geometry) -> Figure:
    """D* and every feature's D_i against 1/(1-S), sticky values marked; histogram of D_i."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    x = 1 / g.density
    for d in range(len(x)):
        jitter = x[d] * np.exp(np.random.default_rng(d).normal(0, 0.03, g.dims.shape[1]))
        rep = g.represented[d]
        left.scatter(jitter[rep], g.dims[d][rep], s=3, color="C0", alpha=0.25, lw=0)
    left.plot(x, g.d_star, "o-", color="k", ms=4, label="D* = m/||W||_F²")
    for v in STICKY:
        left.axhline(v, color="C3", lw=0.6, ls=":")
        left.annotate(f"{v:.3g}", (x[-1], v), textcoords="offset points", xytext=(4, -2), fontsize=7, color="C3")
    left.set(xscale="log", xlabel="1 / (1 − S)", ylabel="dimensions per feature", ylim=(0, 1.1),
             title="D* (line) and feature dimensionalities D_i (dots)")
    left.legend(fontsize=7)
    right.hist(g.dims[g.represented], bins=60, range=(0, 1.1), color="C0")
    for v in STICKY:
        right.axvline(v, color="C3", lw=0.6, ls=":")
    right.set(xlabel="D_i (represented features, all densities)", ylabel="features", title="histogram of D_i")
    return fig


def neuron_figure(nm: sp.Neurons) -> Figure:
    """Median features per neuron (PR of activation mass) against density; W of the kept instance per density."""
    D = len(nm.density)
    fig = Figure(figsize=(1.3 * D + 3, 4.4), layout="constrained")
    grid = fig.add_gridspec(2, D)
    top = fig.add_subplot(grid[0, :])
    for k in range(nm.pr.shape[1]):
        top.scatter(nm.density, nm.pr[:, k], s=10, color="0.6")
    top.plot(nm.density, nm.pr.mean(1), "o-", color="C0", label="mean of seeds")
    top.axhline(1.5, color="C3", lw=0.8, ls=":", label="PR 1.5 (more than one feature)")
    top.set(xscale="log", xlabel="density 1 − S", ylabel="median features per neuron (PR)")
    top.invert_xaxis()
    top.legend(fontsize=7)
    lim = float(np.abs(nm.W).max())
    for d in range(D):
        ax = fig.add_subplot(grid[1, d])
        ax.imshow(nm.W[d], cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set(xticks=[], yticks=[], title=f"{nm.density[d]:.2g}")
        if d == 0:
            ax.set_ylabel("neurons", fontsize=8)
            ax.set_xlabel("features →", fontsize=8)
    return fig
