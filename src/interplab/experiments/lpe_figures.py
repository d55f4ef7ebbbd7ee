"""Metrics, tables, captions and the scatter figure of the `lpe` experiment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from interplab.verdicts import Verdict

_SKIP = ("subjects", "per_target", "over_budget", "controls")


def metrics_of(scored: list[dict], over: list[dict], cfg: Any, subjects: dict) -> dict[str, Any]:
    """metrics[model][method][budget] = mean losses (raw and fitted), floored count, targets, cost;
    plus per-target estimates, the rows over budget and the chartf models' losses."""
    from interplab.subjects.chartf import VOCAB

    out: dict[str, Any] = {"subjects": subjects, "per_target": {}, "over_budget": {}}
    for model in sorted({r["model"] for r in scored}):
        out[model] = {}
        for method in cfg.methods:
            out[model][method] = {}
            for budget in cfg.budgets:
                sel = [r for r in scored if r["model"] == model and r["method"] == method and r["budget"] == budget]
                if not sel:
                    continue
                col = {k: np.array([r[k] for r in sel], dtype=float) for k in (
                    "is_loss", "log_se", "is_loss_fitted", "log_se_fitted", "cost", "floored")}
                out[model][method][str(budget)] = {
                    "is_loss": col["is_loss"].mean(), "log_se": col["log_se"].mean(),
                    "is_loss_fitted": col["is_loss_fitted"].mean(), "log_se_fitted": col["log_se_fitted"].mean(),
                    "is_loss_median": float(np.median(col["is_loss"])), "floored": int(col["floored"].sum()),
                    "n_targets": len(sel), "mean_cost": col["cost"].mean(),
                }
    for r in scored:
        cell = out["per_target"].setdefault(r["model"], {}).setdefault(r["dist"], {}).setdefault(VOCAB[r["target"]], {})
        cell["truth"] = r["truth"]
        cell.setdefault(r["method"], {})[str(r["budget"])] = r["estimate"]
    for r in over:
        cell = out["over_budget"].setdefault(r["model"], {}).setdefault(r["method"], {}).setdefault(
            str(r["budget"]), {"targets": 0, "cost": r["cost"]})
        cell["targets"] += 1
    return out


def loss_table(metrics: dict, cfg: Any) -> dict[str, list]:
    """Mean IS losses per (model, method), raw and fitted side by side at every budget; a budget a
    method did not fit (propagation whose cost exceeds it) has no score, listed in the last column."""
    budgets = [str(b) for b in cfg.budgets]
    columns = (["model", "method"] + [f"{kind} {b}" for b in budgets for kind in ("IS raw", "IS fitted")]
               + [f"log SE fitted {budgets[-1]}", f"floored {budgets[-1]}", "targets", "over budget (not scored)"])
    over = metrics.get("over_budget", {})
    rows = []
    for model, per in metrics.items():
        if model in _SKIP:
            continue
        for method, by_budget in per.items():
            skipped = sorted(over.get(model, {}).get(method, {}), key=int)
            if not by_budget and not skipped:
                continue

            def cell(b: str, k: str, by_budget: dict = by_budget) -> Any:
                return by_budget[b][k] if b in by_budget else None

            rows.append([model, method] + [cell(b, k) for b in budgets for k in ("is_loss", "is_loss_fitted")]
                        + [cell(budgets[-1], "log_se_fitted"), cell(budgets[-1], "floored"),
                           cell(budgets[-1], "n_targets"), ", ".join(skipped) or None])
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
        ax.axvline(1 / max(cfg.budgets), color="0.7", ls="-", lw=0.5)
        ax.set(xscale="log", yscale="log", xlim=(cfg.p_low / 3, 3e-3), ylim=(lo, 1.5), title=method,
               xlabel="exact probability", ylabel="estimate")
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    if methods:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7,
                   ncols=min(6, len(cfg.budgets) * len(markers)), title="budget (model)", title_fontsize=7)
    return fig


def captions(cfg: Any) -> dict[str, str]:
    return {
        "is_loss": "Mean Itakura–Saito loss D_IS(p, q) = p/q − ln(p/q) − 1 over targets (all with p x "
        f"{max(cfg.budgets)} < 1), raw and after a per-method affine calibration in log10 space fitted on the "
        "other (model, distribution) groups (leave one group out: never on a target sharing the scored target's "
        f"sample). Lower is better; estimates below {cfg.floor:g} (naive zeros) are raised to it. A method whose "
        "cost exceeds a budget (propagation when neither variant fits) is not scored there: empty cells, listed "
        "in the last column.",
        "targets": "Every target: the symbol and its exact probability by enumeration.",
        "models": "The chartf subjects: held-out character loss against the unigram baseline.",
        "scatter": "Estimate against exact probability (log-log), one panel per method, colour = budget; "
        "dashed: estimate = truth; dotted: the floor that zero estimates are raised to; grey line: 1 / the "
        "largest budget (every target lies left of it).",
    }


def summary(metrics: dict, vs: list[Verdict], cfg: Any) -> str:
    top = str(max(cfg.budgets))
    parts = []
    for model in [m for m in metrics if m not in _SKIP]:
        ranked = sorted((v[top]["is_loss_fitted"], k) for k, v in metrics[model].items() if top in v)
        parts.append(f"{model}: " + " < ".join(f"{k} ({loss:.3g})" for loss, k in ranked))
    words = "; ".join(f"{v.crux}: {v.verdict} ({v.status})" for v in vs)
    return f"Fitted IS loss at budget {top} (best first) — " + " | ".join(parts) + f". Verdicts — {words}."
