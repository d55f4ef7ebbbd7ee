"""Figures, the table and the summary of the loss-explained experiment, from its metrics alone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from interplab.experiments.base import Verdict

CAPTIONS = {
    "curves": "Fraction of the mean-ablation loss gap recovered with the top-n features (ranked by first-order "
              "attribution on a ranking split) spliced in, every other at its mean, on held-out scoring batches; "
              "bands: 95% batch-bootstrap CIs (SAE: the mean of its refits). 'truth': the planted features.",
    "compute": "Compute-equivalent of each reading on the ladder's model: log10(C_eq / C_model) from the fitted "
               "L(C) = a C^-b + c, clamped to the ladder (points at its floor are upper bounds); dashed: 1%. "
               "Right: the ladder's rungs (loss on the scoring batches) and the fit.",
    "shares": "Each feature's own share of the gap (n = 1, that feature alone), for a uniform random sample of "
              "live features per method (SAE refits pooled); dashed: 1%.",
    "table": "Per study and method: features needed for 50% and 90% of the gap, the fraction at n = 8 and 64, "
             "the full reconstruction's fraction, the median single-feature share, and (ladder) log10 C_eq/C_model.",
}
COLORS = {"sae-topk": "tab:red", "pca": "tab:blue", "random": "tab:gray", "identity": "tab:green",
          "truth": "black", "ica": "tab:purple", "pca-topk": "tab:cyan"}


def _color(method: str) -> str:
    return COLORS.get(method, "tab:orange")


def _grid(n: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list[Any]]:
    cols = min(3, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(width * cols, height * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _band(ax: Any, ns: list[int], value: list[float], ci: list[list[float]], label: str, color: str) -> None:
    v = np.array(value, dtype=float)
    lo = np.array([c[0] if c[0] is not None else np.nan for c in ci], dtype=float)
    hi = np.array([c[1] if c[1] is not None else np.nan for c in ci], dtype=float)
    ax.plot(ns, v, marker=".", color=color, label=label)
    ax.fill_between(ns, lo, hi, color=color, alpha=0.2, linewidth=0)


def curves_figure(metrics: dict[str, Any]) -> Figure:
    keys = list(metrics)
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        m = metrics[key]
        for method, s in m["methods"].items():
            if method.startswith("sae-topk#") or method == "pca-topk":
                continue
            _band(ax, s["ns"], s["frac_mean"], s["frac_mean_ci"], method, _color(method))
        if m.get("sae"):
            s = m["sae"]
            _band(ax, s["ns"], s["frac_mean"], s["frac_mean_ci"], f"sae-topk ({s['refits']} refits)", _color("sae-topk"))
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("features read, n")
        ax.set_ylabel("fraction of loss recovered")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def compute_figure(metrics: dict[str, Any]) -> Figure | None:
    keys = [k for k, m in metrics.items() if m.get("ladder")]
    if not keys:
        return None
    fig, axes = _grid(len(keys) + 1)
    for ax, key in zip(axes, keys):
        for method, c in metrics[key]["compute"].items():
            ax.plot(c["ns"], c["log10_fraction"], marker=".", color=_color(method.split("#")[0]), label=method,
                    alpha=0.6 if "#" in method else 1.0)
        ax.axhline(-2, color="k", ls="--", lw=0.8)
        lad = metrics[key]["ladder"]
        ax.axhline(np.log10(lad["c_min"] / lad["c_model"]), color="gray", ls=":", lw=0.8, label="ladder floor")
        ax.set_xscale("log", base=2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("features read, n")
        ax.set_ylabel("log10 C_eq / C_model")
        ax.legend(fontsize=6)
    lad = metrics[keys[0]]["ladder"]
    ax = axes[-1]
    C = np.array([p["compute"] for p in lad["points"]])
    ax.errorbar(C, [p["loss"] for p in lad["points"]], yerr=[1.96 * p["loss_se"] for p in lad["points"]], fmt="o",
                label="rungs")
    grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 100)
    ax.plot(grid, lad["a"] * (grid / lad["c_top"]) ** (-lad["b"]) + lad["c"], label=f"fit, b={lad['b']:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title("the ladder", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def shares_figure(metrics: dict[str, Any]) -> Figure:
    keys = list(metrics)
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        groups: dict[str, list[float]] = {}
        for method, s in metrics[key]["methods"].items():
            sh = s["singles"]
            vals = [v for v, r in zip(sh["share"], sh["random"]) if r and v is not None]
            if vals:
                groups.setdefault(method.split("#")[0], []).extend(vals)
        names = list(groups)
        for i, name in enumerate(names):
            y = np.array(groups[name])
            ax.scatter(np.full(y.size, i) + np.linspace(-0.2, 0.2, y.size), y, s=6, color=_color(name))
            ax.plot([i - 0.3, i + 0.3], [np.median(y)] * 2, color="k")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_yscale("symlog", linthresh=1e-4)
        every = np.concatenate([np.asarray(v) for v in groups.values()]) if groups else np.zeros(1)
        ax.set_ylim(min(every.min() * 1.5, -1e-5), max(every.max() * 1.5, 0.02))
        ax.axhline(0.01, color="k", ls="--", lw=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_ylabel("single-feature share of the gap")
    fig.tight_layout()
    return fig


def figures(metrics: dict[str, Any]) -> dict[str, Figure]:
    out = {"curves": curves_figure(metrics), "shares": shares_figure(metrics)}
    fig = compute_figure(metrics)
    if fig is not None:
        out["compute"] = fig
    return out


def _at(s: dict[str, Any], n: int) -> float | None:
    return s["frac_mean"][s["ns"].index(n)] if n in s["ns"] else None


def table(metrics: dict[str, Any]) -> dict[str, list]:
    rows = []
    for key, m in metrics.items():
        for method, s in m["methods"].items():
            comp = m.get("compute", {}).get(method, {})
            lf = comp.get("log10_fraction") or []
            at64 = lf[comp["ns"].index(min(64, s["width"]))] if lf and min(64, s["width"]) in comp["ns"] else None
            rows.append([key, method, s["width"], s["n50"], s["n90"], _at(s, 8), _at(s, 64), s["recon"]["frac_mean"],
                         s["singles"]["median"], at64, comp.get("recon")])
    cols = ["study", "method", "width", "n50", "n90", "frac@8", "frac@64", "frac full", "median share",
            "log10 C/C @64", "log10 C/C full"]
    return {"columns": cols, "rows": rows}


def summarise(verdicts: list[Verdict], metrics: dict[str, Any]) -> str:
    lines = []
    for key, m in metrics.items():
        s = m.get("sae")
        pca = m["methods"].get("pca")
        if s and pca:
            lines.append(f"{key}: 50% of the loss gap with n={s.get('n50')} SAE latents (PCA: {pca['n50']} components); "
                         f"the whole SAE recovers {s['recon_frac']:.3g} of it")
    findings = [v for v in verdicts if v.status != "harness check"]
    by_crux: dict[str, dict[str, list[str]]] = {}
    for v in findings:
        word = v.verdict if v.status == "counted" else v.status
        by_crux.setdefault(v.crux, {}).setdefault(word, []).append(v.subject or "")
    for crux, words in by_crux.items():
        lines.append(f"{crux}: " + "; ".join(f"{w} on {', '.join(subjects)}" for w, subjects in words.items()))
    counted = sum(v.status == "counted" for v in findings)
    lines.append(f"{counted} of {len(findings)} findings counted (their planted controls passed).")
    return "\n".join(lines)
