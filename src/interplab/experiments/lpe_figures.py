"""Scoring, calibration, verdicts, tables and the scatter figure of the `lpe` experiment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize

from interplab.experiments.base import Verdict, bootstrap_ci, decide

LN10 = math.log(10.0)


def is_loss(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Itakura–Saito loss p/q - ln(p/q) - 1 (q already floored above 0)."""
    z = np.log(p) - np.log(q)
    return np.expm1(z) - z


def score(rows: list[dict], floor: float) -> list[dict]:
    """Add `q` (estimate raised to the floor), `floored`, `is_loss` and `log_se` to each row."""
    out = []
    for r in rows:
        q = max(float(r["estimate"]), floor)
        p = float(r["truth"])
        out.append({**r, "q": q, "floored": r["estimate"] < floor,
                    "is_loss": float(is_loss(np.array(p), np.array(q))),
                    "log_se": (math.log10(q) - math.log10(p)) ** 2})
    return out


def _fit_map(lq: np.ndarray, lp: np.ndarray) -> tuple[float, float]:
    """(alpha, beta) minimising the mean IS loss of log10 q' = alpha log10 q + beta."""
    def loss(v: np.ndarray) -> float:
        z = LN10 * (lp - np.clip(v[0] * lq + v[1], -300, 0))
        return float(np.mean(np.expm1(np.minimum(z, 700)) - z))

    res = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10})
    return float(res.x[0]), float(res.x[1])


def calibrate(scored: list[dict], seed: int) -> list[dict]:
    """Two-fold per-(model, method, budget) calibration: each half is scored with the map of the other.

    The split is over targets (model, distribution, symbol) and the same for every method.
    """
    keys = sorted({(r["model"], r["dist"], r["target"]) for r in scored})
    rng = np.random.default_rng(seed)
    half = {k: int(i % 2) for i, k in zip(rng.permutation(len(keys)), keys)}
    groups: dict[tuple, list[dict]] = {}
    for r in scored:
        groups.setdefault((r["model"], r["method"], r["budget"]), []).append(r)
    out = []
    for group in groups.values():
        for fold in (0, 1):
            fit = [r for r in group if half[(r["model"], r["dist"], r["target"])] != fold]
            test = [r for r in group if half[(r["model"], r["dist"], r["target"])] == fold]
            if not fit:
                alpha, beta = 1.0, 0.0  # nothing to fit on: identity
            else:
                alpha, beta = _fit_map(np.log10([r["q"] for r in fit]), np.log10([r["truth"] for r in fit]))
            for r in test:
                lq = min(alpha * math.log10(r["q"]) + beta, 0.0)
                p = r["truth"]
                out.append({**r, "q_fitted": 10**lq, "is_loss_fitted": float(is_loss(np.array(p), np.array(10**lq))),
                            "log_se_fitted": (lq - math.log10(p)) ** 2})
    return out


def _best(scored: list[dict], model: str, methods: tuple[str, ...], budget: int) -> str | None:
    means = {m: np.mean([r["is_loss_fitted"] for r in scored if r["model"] == model and r["method"] == m
                         and r["budget"] == budget]) for m in methods
             if any(r["method"] == m for r in scored)}
    return min(means, key=means.get) if means else None


def _per_target(scored: list[dict], budget: int, pick: dict[str, str | None], key: str) -> dict[tuple, float]:
    return {(r["model"], r["dist"], r["target"]): r[key] for r in scored
            if r["budget"] == budget and pick.get(r["model"]) == r["method"]}


def verdicts(scored: list[dict], cfg: Any, extrapolation: tuple, sampling: tuple) -> list[Verdict]:
    """The published ordering at the largest budget, pooled over models, on the fitted IS loss.

    Per model, each family is represented by its better method (lower mean fitted IS loss): importance
    sampling = best of ITGIS and MHIS, activation extrapolation = best of QLD and GLD. The statistic
    is the mean over targets of loss(loser side) - loss(claimed winner); > 0 supports the claim; the
    CI is a percentile bootstrap over targets.
    """
    budget = max(cfg.budgets)
    models = sorted({r["model"] for r in scored})
    families = {
        "importance sampling": {m: _best(scored, m, ("itgis", "mhis"), budget) for m in models},
        "activation extrapolation": {m: _best(scored, m, extrapolation, budget) for m in models},
        "naive sampling": {m: _best(scored, m, ("naive",), budget) for m in models},
    }
    claims = [("importance sampling", "activation extrapolation"), ("importance sampling", "naive sampling"),
              ("activation extrapolation", "naive sampling")]
    out = []
    for winner, loser in claims:
        if not all(any(v for v in families[f].values()) for f in (winner, loser)):
            continue
        w = _per_target(scored, budget, families[winner], "is_loss_fitted")
        lo = _per_target(scored, budget, families[loser], "is_loss_fitted")
        wr = _per_target(scored, budget, families[winner], "is_loss")
        lr = _per_target(scored, budget, families[loser], "is_loss")
        keys = sorted(set(w) & set(lo))
        diff = np.array([lo[k] - w[k] for k in keys])
        raw = np.mean([lr[k] - wr[k] for k in keys]) if keys else float("nan")
        wins = int(np.sum(diff > 0))
        ci = bootstrap_ci(diff, seed=cfg.seed)
        chosen = ", ".join(f"{m}: {families[winner][m]} vs {families[loser][m]}" for m in models)
        out.append(Verdict(
            crux=f"rare outputs: {winner} beats {loser}",
            statistic=float(diff.mean()) if len(diff) else float("nan"),
            ci=(ci.low, ci.high), null=0.0, verdict=decide(ci, 0.0),
            subject=f"chartf {'/'.join(models)}, {len(keys)} targets, budget {budget}",
            note=f"mean over targets of fitted IS loss({loser}) - fitted IS loss({winner}); families "
                 f"represented per model by their better method ({chosen}); raw (unfitted) difference "
                 f"{raw:.3g}; the claimed winner has the lower fitted loss on {wins} of {len(keys)} targets "
                 "(the mean is heavy-tailed: one badly calibrated target can decide it). Null 0: no difference.",
        ))
    return out


def loss_table(metrics: dict, cfg: Any) -> dict[str, list]:
    budgets = [str(b) for b in cfg.budgets]
    columns = ["model", "method"] + [f"IS {b}" for b in budgets] + [f"IS fitted {b}" for b in budgets] + \
        [f"log SE fitted {budgets[-1]}", f"floored {budgets[-1]}"]
    rows = []
    for model, per in metrics.items():
        if model in ("subjects", "per_target"):
            continue
        for method, by_budget in per.items():
            if budgets[-1] not in by_budget:
                continue
            rows.append([model, method] + [by_budget[b]["is_loss"] for b in budgets]
                        + [by_budget[b]["is_loss_fitted"] for b in budgets]
                        + [by_budget[budgets[-1]]["log_se_fitted"], by_budget[budgets[-1]]["floored"]])
    return {"columns": columns, "rows": rows}


def scatter_figure(scored: list[dict], cfg: Any) -> Figure:
    """Log-log estimate against truth, one panel per method, colour = budget, marker = model."""
    methods = list(cfg.methods)
    cols = min(3, len(methods))
    nrows = math.ceil(len(methods) / cols)
    fig = Figure(figsize=(3.3 * cols, 3.1 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    markers = dict(zip(sorted({r["model"] for r in scored}), "os^Dv"))
    lo = cfg.floor / 3
    for ax, method in zip(axes, methods):
        for j, budget in enumerate(cfg.budgets):
            for model, mk in markers.items():
                sel = [r for r in scored if r["method"] == method and r["budget"] == budget and r["model"] == model]
                if sel:
                    ax.scatter([r["truth"] for r in sel], [r["q"] for r in sel], s=12, marker=mk, alpha=0.7,
                               color=f"C{j}", label=f"{budget} ({model})" if method == methods[0] else None)
        ax.plot([lo, 1], [lo, 1], "k--", lw=0.7)
        ax.axhline(cfg.floor, color="0.5", ls=":", lw=0.7)
        ax.set(xscale="log", yscale="log", xlim=(cfg.p_low / 3, 3e-3), ylim=(lo, 1.5), title=method,
               xlabel="exact probability", ylabel="estimate")
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    if methods:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7,
                   ncols=min(6, len(cfg.budgets) * len(markers)), title="budget (model)", title_fontsize=7)
    return fig
