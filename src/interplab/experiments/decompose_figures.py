"""The decompose experiment's table, Pareto figures and summary, drawn from its `metrics` dict.

`metrics[site][method]` holds the headline budget's numbers on top and the other budgets under
"k<k>" (see `interplab.experiments.decompose`); everything here reads that layout only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from interplab.verdicts import NEEDS_SCALE, SUPERSEDED, UNCALIBRATED, summary_counts

PARETO = {
    "pareto_fvu": ("fvu", "FVU (lower is better)"),
    "pareto_delta_ce": ("delta_ce_nats", "ΔCE, nats (lower is better)"),
    "pareto_interp": (None, "interpretability (higher is better)"),
}
CAPTIONS = {
    "methods": "Every method on every site at every budget k, on held-out data. ΔCE in nats (spliced minus "
    "clean; for toy models the subject's own loss); interp = label-based interpretability (LMs); MMCS/MCC/F1 "
    "= ground-truth recovery (synthetic, TMS). '—': not defined for that subject.",
    "pareto_fvu": "FVU against L0 on held-out data, one panel per site; one line per method joins its "
    "budgets k. Lower left is better. Linear methods dashed, SAEs solid; bars are 95% bootstrap CIs.",
    "pareto_delta_ce": "Loss increase when the reconstruction is spliced in (ΔCE, nats; the subject's own "
    "loss for TMS) against L0. Lower is better.",
    "pareto_interp": "Interpretability against L0: label-based interp_score on LM sites, Hungarian-matched "
    "MCC with the true features on synthetic and TMS. Higher is better.",
}
COLUMNS = ["site", "method", "k", "L0", "FVU", "dead", "ΔCE nats", "CE score (mean)", "CE score (zero)",
           "KL score", "bits/token", "MMCS", "MCC", "F1", "interp", "fit s"]


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _levels(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A method's entries at every budget it was run at, smallest k first."""
    out = [entry] + [v for key, v in entry.items() if key.startswith("k") and key[1:].isdigit() and isinstance(v, dict)]
    return sorted(out, key=lambda e: e["k"])


def methods_table(metrics: dict[str, dict[str, Any]]) -> dict[str, list]:
    rows = []
    for site, methods in metrics.items():
        for method, entry in methods.items():
            for e in _levels(entry):
                keys = ("l0", "fvu", "dead_frac", "delta_ce_nats", "ce_score_mean", "ce_score_zero", "kl_score",
                        "bits_per_token", "mmcs", "mcc", "f1", "interp_score", "fit_seconds")
                rows.append([site, method, e["k"], *(_num(e.get(key)) for key in keys)])
    return {"columns": COLUMNS, "rows": rows}


def _colours(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    names = sorted({m for methods in metrics.values() for m in methods})
    cmap = colormaps["tab20"] if len(names) > 10 else colormaps["tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _interp_key(methods: dict[str, Any]) -> str | None:
    first = next(iter(methods.values()), {})
    for key in ("interp_score", "mcc"):
        if first.get(key) is not None:
            return key
    return None


def pareto(metrics: dict[str, dict[str, Any]], ks: list[int], key: str | None, ylabel: str) -> Figure | None:
    """One panel per site that defines the metric: the metric against L0, a line per method over k."""
    panels = [(site, key or _interp_key(methods)) for site, methods in metrics.items()]
    panels = [(site, metric) for site, metric in panels
              if metric and any(e.get(metric) is not None for e in metrics[site].values())]
    if not panels:
        return None
    colours = _colours(metrics)
    fig = Figure(figsize=(4.2 * len(panels) + 1.8, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (site, metric) in zip(axes, panels, strict=True):
        for method, entry in metrics[site].items():
            pts = _levels(entry)
            xs = [_num(p.get("l0")) for p in pts]
            ys = [_num(p.get(metric)) for p in pts]
            keep = [i for i in range(len(pts)) if xs[i] is not None and ys[i] is not None]
            if not keep:
                continue
            x, y = np.array([xs[i] for i in keep]), np.array([ys[i] for i in keep])
            bounds = [pts[i].get("ci", {}).get(metric) or [None, None] for i in keep]
            low = np.array([_num(b[0]) if _num(b[0]) is not None else v for b, v in zip(bounds, y, strict=True)])
            high = np.array([_num(b[1]) if _num(b[1]) is not None else v for b, v in zip(bounds, y, strict=True)])
            style = "-" if entry.get("sae") else "--"
            ax.errorbar(x, y, yerr=[np.maximum(y - low, 0), np.maximum(high - y, 0)], fmt="o" + style, ms=4, lw=1.2,
                        capsize=2, color=colours[method], label=method)
        _l0_axis(ax, ks)
        ax.set(xlabel="L0 (active codes per token)", ylabel=f"{metric}" if key is None else ylabel, title=site)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
    seen: dict[str, Any] = {}  # one legend entry per method, from whichever panel draws it
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen.keys()), loc="outside right center", fontsize=7)
    fig.suptitle(f"{ylabel} against L0, budgets k = {', '.join(map(str, ks))}", fontsize=10)
    return fig


def _l0_axis(ax: Any, ks: list[int]) -> None:
    """Log L0 axis with plain numbers when the points span a wide range, linear otherwise; the
    budgets k drawn as dotted lines (hard-budget methods sit on them, mean-target SAEs near them)."""
    low, high = ax.get_xlim()
    for k in ks:
        ax.axvline(k, color="0.6", lw=0.8, ls=":", zorder=0)
    if high > 4 * max(low, 1e-9):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(min(low, *ks) - 1, max(high, *ks) + 1)


def figures(metrics: dict[str, dict[str, Any]], ks: list[int]) -> dict[str, Figure]:
    out = {}
    for name, (key, label) in PARETO.items():
        fig = pareto(metrics, ks, key, label)
        if fig is not None:
            out[name] = fig
    return out


def headline(key: str, res: dict[str, dict[str, Any]], sae: str | None, k: int) -> str:
    """One sentence of key numbers: the compared SAE (first seed) against sign-split PCA on one site."""
    if sae is None or "pca" not in res:
        return ""
    s, p = res[sae], res["pca"]
    parts = [f"{name} {s[m]:.3g} vs {p[m]:.3g}" for m, name in
             (("fvu", "FVU"), ("delta_ce_nats", "ΔCE"), ("mcc", "MCC"), ("interp_score", "interp"))
             if s.get(m) is not None and p.get(m) is not None]
    return f"{key} (k={k}): {sae} (seed {s['refits'][0]['seed']}) against PCA, " + ", ".join(parts) + "."


def summarise(verdicts: list[Any], lines: list[str]) -> str:
    """Counts of verdicts by outcome and status, then the key numbers of each site."""
    c = summary_counts(verdicts)
    return (f"Of {len(verdicts)} comparisons of the chosen SAE (over its refits) with sign-split PCA, counted "
            f"(both controls passed): the SAE wins {c['supported']}, PCA wins {c['not supported']}, inconclusive "
            f"{c['inconclusive']}; uncalibrated {c[UNCALIBRATED]}, needing --scale default {c[NEEDS_SCALE]}, "
            f"superseded definitions shown beside {c[SUPERSEDED]}. " + " ".join(line for line in lines if line))
