"""The first figure of Toy Models of Superposition: 5 features in 2 dimensions, across sparsity.

A ReLU-output model x' = ReLU(W^T W x + b) is trained at ten feature densities (probability a
feature is non-zero, 1 - S) from 1 down to 0.05, several instances per density, all as one batched
TMS model. Dense features are stored in at most m orthogonal directions and the rest are dropped;
sparse features are packed into more directions than dimensions (a pentagon for 5 in 2): that is
superposition, and it appears only because sparse features rarely interfere.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from pydantic import Field

from interplab import ui
from interplab.config import Config
from interplab.experiments.base import Experiment, Result, Verdict, bootstrap_ci, decide, register

CRUX = "superposition appears as features get sparser"


class IntroConfig(Config):
    """Settings of the superposition-intro experiment (defaults follow the paper)."""

    n_features: int = Field(5, ge=2)
    """Number of input features n."""
    n_hidden: int = Field(2, ge=1)
    """Hidden dimensions m; superposition means more than m features represented."""
    importance_decay: float = Field(0.9, gt=0, le=1)
    """Importance of feature i is importance_decay ** i."""
    n_densities: int = Field(10, ge=2, le=100)
    """Number of feature densities, 20 ** -linspace(0, 1, n_densities) (from 1 down to 0.05)."""
    seeds: int = Field(4, ge=1)
    """Independently initialised instances per density; the lowest-loss one is shown."""
    steps: int = Field(10_000, ge=1)
    """Training steps (AdamW, constant learning rate, fresh batch every step)."""
    batch_size: int = Field(1024, ge=1)
    """Training batch size."""
    lr: float = Field(1e-3, gt=0)
    """Learning rate."""
    threshold: float = Field(0.5, gt=0)
    """A feature counts as represented when its column norm ||W_i|| exceeds this."""
    eval_samples: int = Field(16_384, ge=64)
    """Fresh inputs per instance used to measure each instance's final loss."""
    seed: int = 0
    """Seed of initialisation, training batches and evaluation batches."""


class Trained(NamedTuple):
    """Weights and losses of every instance, arranged (density, seed, ...)."""

    density: np.ndarray  # (D,)
    W: np.ndarray  # (D, S, m, n)
    b: np.ndarray  # (D, S, n)
    loss: np.ndarray  # (D, S)


def densities(n: int) -> np.ndarray:
    """The paper's grid of feature densities 1 - S, densest first."""
    return 20.0 ** -np.linspace(0.0, 1.0, n)


def train(cfg: IntroConfig) -> Trained:
    """Train every (density, seed) instance at once as one batched TMS model and evaluate it."""
    from interplab.subjects import load_subject
    from interplab.subjects.tms import sample_tms

    dens = densities(cfg.n_densities)
    per_instance = np.repeat(dens, cfg.seeds)  # density-major: instance = d * seeds + s
    subject = load_subject(
        "tms",
        n_features=cfg.n_features,
        n_hidden=cfg.n_hidden,
        variant="relu",
        importance_decay=cfg.importance_decay,
        density=[float(d) for d in per_instance],
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
    )
    model = subject.model
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # evaluation data never seen in training
    with torch.no_grad():
        x = sample_tms(cfg.eval_samples, torch.tensor(per_instance, dtype=torch.float32), cfg.n_features, gen)
        loss = model.loss_per_instance(x).detach().cpu().numpy()  # (inst,)
        W = model.W.detach().cpu().numpy()  # (inst, m, n)
        b = model.b.detach().cpu().numpy()  # (inst, n)
    D, S = cfg.n_densities, cfg.seeds
    return Trained(dens, W.reshape(D, S, *W.shape[1:]), b.reshape(D, S, -1), loss.reshape(D, S))


class Stats(NamedTuple):
    """Per-instance statistics, each (density, seed)."""

    represented: np.ndarray  # count of ||W_i|| > threshold
    frob: np.ndarray  # ||W||_F^2, the paper's soft count of features represented
    d_star: np.ndarray  # dimensions per feature m / ||W||_F^2


def stats(t: Trained, threshold: float) -> Stats:
    norms = np.linalg.norm(t.W, axis=-2)  # (D, S, n)
    frob = (t.W**2).sum(axis=(-2, -1))  # (D, S)
    m = t.W.shape[-2]
    return Stats((norms > threshold).sum(-1).astype(float), frob, m / np.maximum(frob, 1e-12))


def verdict(st: Stats, m: int, seed: int, subject: str) -> Verdict:
    """Sparsest-density count minus the larger of the densest count and m, bootstrapped over seeds.

    Why this statistic: "more features represented when sparse than when dense" alone could be a
    rise from 1 to 2 features with no superposition at all, and "more than m features when sparse"
    alone says nothing about sparsity being the cause. Requiring the sparse count to exceed both
    tests the claim as stated. Each seed gives one difference (instances are independent, so the
    per-seed difference has the variance of the two counts combined).
    """
    per_seed = st.represented[-1] - np.maximum(st.represented[0], m)  # (S,)
    ci = bootstrap_ci(per_seed, seed=seed)
    n_seeds = len(per_seed)
    note = (
        f"statistic = features represented (||W_i|| > threshold) at the sparsest density minus the larger "
        f"of the count at the densest density and m = {m}, the most features a model can hold without "
        f"superposition; mean over {n_seeds} seeds, percentile bootstrap CI over seeds"
        + (" (few seeds: the CI is coarse)" if n_seeds < 8 else "")
        + ". Null 0: sparsity adds no feature beyond what fits orthogonally."
    )
    return Verdict(
        crux=CRUX,
        statistic=float(per_seed.mean()),
        ci=(ci.low, ci.high),
        null=0.0,
        verdict=decide(ci, 0.0),
        subject=subject,
        note=note,
    )


def _importance(n: int, decay: float) -> np.ndarray:
    return decay ** np.arange(n)


def geometry_figure(t: Trained, best: np.ndarray, importance: np.ndarray) -> Figure:
    """Paper-style row per density: columns W_i as arrows, then W^T W, then the bias b."""
    D, n = len(t.density), t.W.shape[-1]
    fig = Figure(figsize=(1.45 * D + 0.9, 4.6), layout="constrained")
    grid = fig.add_gridspec(3, D, height_ratios=[1.0, 1.0, 1.6 / n + 0.05])
    colours = colormaps["viridis"](Normalize(importance.min() * 0.95, importance.max())(importance))
    shown_W, shown_b = t.W[np.arange(D), best], t.b[np.arange(D), best]  # (D, m, n), (D, n)
    gram = np.einsum("dmi,dmj->dij", shown_W, shown_W)  # (D, n, n)
    lim = max(1.0, float(np.abs(gram).max()), float(np.abs(shown_b).max()))  # one colour scale for all panels
    reach = 1.15 * max(1.0, float(np.linalg.norm(shown_W, axis=-2).max()))
    for d in range(D):
        W, b = shown_W[d], shown_b[d]  # (m, n), (n,)
        ax = fig.add_subplot(grid[0, d])
        ax.add_patch(_circle())
        for i in range(n):
            ax.annotate("", xy=(W[0, i], W[1, i] if W.shape[0] > 1 else 0.0), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="-|>", color=colours[i], lw=1.6, shrinkA=0, shrinkB=0))
        ax.set(xlim=(-reach, reach), ylim=(-reach, reach), xticks=[], yticks=[], aspect="equal")
        ax.set_title(f"1−S = {t.density[d]:.3g}", fontsize=8)
        heat = fig.add_subplot(grid[1, d])
        image = heat.imshow(gram[d], cmap="RdBu", vmin=-lim, vmax=lim)
        heat.set(xticks=[], yticks=[])
        bias = fig.add_subplot(grid[2, d])
        bias.imshow(b[None, :], cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        bias.set(xticks=[], yticks=[])
        if d == 0:
            ax.set_ylabel("columns W_i", fontsize=8)
            heat.set_ylabel("WᵀW", fontsize=8)
            bias.set_ylabel("b", fontsize=8, rotation=0, labelpad=8, va="center")
    fig.colorbar(image, ax=fig.axes[1::3], shrink=0.9, pad=0.01, label="WᵀW and b")
    fig.suptitle("Dense (left) to sparse (right): arrows coloured by importance (yellow = most important)",
                 fontsize=9)
    return fig


def _circle() -> Any:
    from matplotlib.patches import Circle

    return Circle((0, 0), 1.0, fill=False, ls=":", lw=0.7, color="0.6")


def curves_figure(t: Trained, st: Stats, best: np.ndarray, m: int) -> Figure:
    """Features represented and dimensions per feature D* against 1/(1 - S)."""
    x = 1.0 / t.density
    idx = np.arange(len(x))
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for s in range(st.represented.shape[1]):
        jitter = 1.0 + 0.015 * (s - (st.represented.shape[1] - 1) / 2)
        left.scatter(x * jitter, st.represented[:, s], s=10, color="0.7", zorder=1)
        right.scatter(x * jitter, st.d_star[:, s], s=10, color="0.7", zorder=1)
    left.plot(x, st.represented[idx, best], "o-", color="C0", label="||W_i|| > threshold (best seed)", zorder=3)
    left.plot(x, st.frob[idx, best], "s--", color="C1", ms=4, label="||W||_F² (best seed)", zorder=2)
    left.axhline(m, color="k", lw=0.8, ls=":", label=f"m = {m} dimensions")
    top = max(float(t.W.shape[-1]), float(np.nanmax(st.frob[idx, best])))
    left.set(xscale="log", xlabel="1 / (1 − S)   (sparser →)", ylabel="features represented", ylim=(0, top + 0.5))
    left.legend(fontsize=7, loc="upper left")
    right.plot(x, st.d_star[idx, best], "o-", color="C2", zorder=3)
    for level in (1.0, 0.5, m / t.W.shape[-1]):
        right.axhline(level, color="k", lw=0.6, ls=":")
        right.annotate(f"{level:.2g}", (x[-1], level), textcoords="offset points", xytext=(4, 2), fontsize=7)
    right.set(xscale="log", xlabel="1 / (1 − S)   (sparser →)", ylabel="D* = m / ||W||_F²",
              ylim=(0, max(1.15, float(np.nanmax(st.d_star)) * 1.05)))
    right.set_title("dimensions per feature (grey: every seed)", fontsize=9)
    left.set_title("features represented", fontsize=9)
    return fig


def per_density_table(t: Trained, st: Stats, best: np.ndarray) -> dict[str, list]:
    rows = []
    for d, dens in enumerate(t.density):
        k = best[d]
        rows.append([float(dens), float(1 - dens), float(st.represented[d, k]), float(st.represented[d].mean()),
                     float(st.frob[d, k]), float(st.d_star[d, k]), float(t.loss[d, k])])
    columns = ["density 1−S", "sparsity S", "represented (best)", "represented (mean of seeds)",
               "||W||_F²", "D*", "loss (best)"]
    return {"columns": columns, "rows": rows}


def metrics(t: Trained, st: Stats, best: np.ndarray) -> dict[str, Any]:
    """Per density (best seed, as the paper shows), keyed by the density."""
    out: dict[str, Any] = {}
    for d, dens in enumerate(t.density):
        k = best[d]
        out[f"{dens:.4g}"] = {
            "density": float(dens),
            "features_represented": float(st.represented[d, k]),
            "features_represented_mean": float(st.represented[d].mean()),
            "frobenius_sq": float(st.frob[d, k]),
            "dims_per_feature": float(st.d_star[d, k]),
            "loss": float(t.loss[d, k]),
            "best_seed": int(k),
        }
    return {"by_density": out}


@register
class SuperpositionIntro(Experiment):
    """Toy Models of Superposition, figure 1: 5 features in 2 dims become superposed as they get sparser."""

    name = "superposition-intro"
    title = "Superposition appears as features get sparser (TMS figure 1)"
    Config = IntroConfig
    small = {"steps": 3000}
    in_cruxes = False  # `superposition` reproduces this figure as its first part

    def run(self, cfg: IntroConfig) -> Result:
        ui.info(f"training {cfg.n_densities * cfg.seeds} instances for {cfg.steps} steps")
        t = train(cfg)
        st = stats(t, cfg.threshold)
        best = t.loss.argmin(axis=1)  # (D,) lowest-loss seed per density
        importance = _importance(cfg.n_features, cfg.importance_decay)
        subject = f"tms: {cfg.n_features} features in {cfg.n_hidden} dims, ReLU output"
        v = verdict(st, cfg.n_hidden, cfg.seed, subject)
        k0, k1 = best[0], best[-1]
        summary = (
            f"{cfg.n_features} features with importance {cfg.importance_decay}^i in {cfg.n_hidden} dimensions. "
            f"At density 1 the best model represents {st.represented[0, k0]:.0f} features "
            f"(D* = {st.d_star[0, k0]:.2f}); at density {t.density[-1]:.3g} it represents "
            f"{st.represented[-1, k1]:.0f} (D* = {st.d_star[-1, k1]:.2f}). Verdict: {v.verdict}."
        )
        return Result(
            experiment=self.name,
            title=self.title,
            config=cfg.model_dump(mode="json"),
            seed=cfg.seed,
            metrics=metrics(t, st, best),
            verdicts=[v],
            tables={"per_density": per_density_table(t, st, best)},
            figures={
                "geometry": geometry_figure(t, best, importance),
                "features_vs_density": curves_figure(t, st, best, cfg.n_hidden),
            },
            captions={
                "per_density": "Per density (best seed of each density, except the mean column)",
                "geometry": "Each column is one density (dense left, sparse right), lowest-loss seed. Top: the "
                "feature directions W_i in the hidden plane, coloured by importance. Middle: WᵀW (blue "
                "positive, red negative). Bottom: the bias b; negative biases let the ReLU discard interference.",
                "features_vs_density": "Left: features represented (grey dots: every seed). Right: dimensions "
                "per feature D* = m/||W||_F², which sticks at 1 (orthogonal pairs) and 1/2 (antipodal pairs); a "
                "pentagon of unit columns would give m/n, and columns longer than 1 (which the ReLU model "
                "learns alongside a negative bias) push it lower.",
            },
            summary=summary,
        )
