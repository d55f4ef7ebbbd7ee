"""Figures, tables and the Result of the estimators experiment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from interplab.experiments.base import Experiment, Result, Verdict

_MARKERS = {"mean": "o", "cov": "s", "cumulant": "^"}


def _panel(ax: Any, m: dict[str, Any], title: str) -> None:
    """One setting: Monte Carlo's nmse against FLOPs (with 1/N), the estimators as points."""
    per_sample = m["best"]["mc_flops_per_sample"]
    floor = m["best"]["nmse_floor"]
    mc = sorted((v["flops"], v["nmse"]) for k, v in m.items() if k.startswith("montecarlo"))
    if mc:
        f = np.array([p[0] for p in mc])
        ax.plot(f, np.maximum([p[1] for p in mc], floor), "k.-", lw=1, label="Monte Carlo (measured)")
    lo = min([per_sample] + [v["flops"] for k, v in m.items() if isinstance(v, dict) and "flops" in v])
    hi = max(f.max() if mc else per_sample, lo * 10)
    xs = np.geomspace(lo / 2, hi * 2, 20)
    ax.plot(xs, per_sample / np.maximum(xs, per_sample), "k:", lw=0.8, label="Monte Carlo 1/N")
    ax.axhline(floor, color="0.6", lw=0.6, ls="--", label="ground-truth resolution")
    for i, (k, v) in enumerate((k, v) for k, v in m.items() if isinstance(v, dict) and "nmse" in v
                               and not k.startswith("montecarlo")):
        shown = max(v["nmse"], floor)
        marker = _MARKERS.get(k.split("_")[0], "D")
        ax.plot([v["flops"]], [shown], marker, color=f"C{i}", ms=6, ls="none",
                mfc="none" if v["nmse"] < floor else f"C{i}", label=k)
    ax.set(xscale="log", yscale="log", title=title)
    ax.tick_params(labelsize=7)


def mse_figure(metrics: dict[str, Any], widths: list[int], depths: list[int], what: str) -> Figure:
    """nmse against FLOPs: one panel per (depth row, width column)."""
    fig = Figure(figsize=(2.8 * len(widths) + 1.5, 2.5 * len(depths) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(depths), len(widths), squeeze=False))
    for r, depth in enumerate(depths):
        for c, width in enumerate(widths):
            label = f"w{width}_d{depth}"
            if label in metrics:
                _panel(axes[r, c], metrics[label], f"width {width}, depth {depth}")
            if c == 0:
                axes[r, c].set_ylabel("variance-normalised MSE", fontsize=8)
            if r == len(depths) - 1:
                axes[r, c].set_xlabel("FLOPs", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)
    fig.suptitle(f"{what}: final-layer mean, error against FLOPs (hollow: below the truth's resolution)",
                 fontsize=9)
    return fig


def mlp_table(metrics: dict[str, Any]) -> dict[str, list]:
    rows = []
    for label, m in metrics.items():
        per_sample = m["best"]["mc_flops_per_sample"]
        for k, v in m.items():
            if not isinstance(v, dict) or "nmse" not in v:
                continue
            n_eq = max(v["flops"] / per_sample, 1.0)
            ratio = (1 / n_eq) / max(v["nmse"], m["best"]["nmse_floor"])
            rows.append([label, k, v["nmse"], v["flops"], 1 / n_eq, ratio])
    return {"columns": ["setting", "method", "nmse", "FLOPs", "MC nmse at equal FLOPs (1/N)", "ratio MC / method"],
            "rows": rows}


def calibration_table(calib: dict[str, Any]) -> dict[str, list]:
    rows = [[label, k, v["mean_error"], v["slope"], v["intercept"]]
            for label, per in calib.items() for k, v in per.items()]
    return {"columns": ["setting", "method", "mean (Y - G) / sd", "slope of Y on G", "intercept"], "rows": rows}


def basis_table(basis: dict[str, Any]) -> dict[str, list]:
    rows = [[subject, b, v["mean_error"], v["delta_loss"], v["recon_delta_loss"], v["clean_loss"]]
            for subject, per in basis.items() for b, v in per.items() if isinstance(v, dict)]
    return {"columns": ["subject", "basis", "mean error (normalised)", "delta loss", "delta loss (reconstruction only)",
                        "clean loss"], "rows": rows}


def basis_figure(basis: dict[str, Any]) -> Figure:
    subjects = list(basis)
    fig = Figure(figsize=(4.2 * len(subjects), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(subjects), squeeze=False)[0])
    for ax, subject in zip(axes, subjects):
        per = {b: v for b, v in basis[subject].items() if isinstance(v, dict)}
        names = list(per)
        ys = [per[b]["delta_loss"] for b in names]
        errs = [np.std(per[b].get("per_repeat_delta_loss", [0.0])) for b in names]
        ax.bar(names, ys, yerr=errs, color=[f"C{i}" for i in range(len(names))])
        ax.bar(names, [per[b]["recon_delta_loss"] for b in names], fill=False, hatch="//", edgecolor="k", lw=0.5)
        ax.set(title=subject, ylabel="loss increase")
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.suptitle("Damage of presuming the codes independent (hatched: reconstruction alone)", fontsize=9)
    return fig


def _summary(metrics: dict[str, Any], verdicts: list[Verdict]) -> str:
    mlp = metrics["mlp"]
    parts = []
    for label, m in mlp.items():
        parts.append(f"{label}: {m['best']['method']} {10 ** m['best']['log10_ratio_vs_mc']:.3g}x")
    text = "Best propagation estimator's nmse against Monte Carlo's at equal FLOPs (ratio, >1 favours " \
           "propagation): " + "; ".join(parts) + "."
    for subject, best in metrics.get("basis_best", {}).items():
        text += f" Basis study, {subject}: least damage in the {best} basis."
    supported = sum(v.verdict == "supported" for v in verdicts)
    return text + f" {supported} of {len(verdicts)} verdicts supported."


def result(exp: Experiment, cfg: Any, metrics: dict[str, Any], verdicts: list[Verdict]) -> Result:
    figures = {"mse_vs_flops": mse_figure(metrics["mlp"], cfg.widths, cfg.depths, "random ReLU MLPs")}
    tables = {"mlp": mlp_table(metrics["mlp"]), "calibration": calibration_table(metrics["calibration"])}
    captions = {
        "mse_vs_flops": "Variance-normalised MSE of the final-layer mean (ground truth from "
        f"2^{cfg.truth_log2} samples, its sampling error subtracted) against FLOPs counted from operations. "
        "Black: Monte Carlo measured; dotted: its expectation 1/N. Points: propagation estimators.",
        "mlp": "Every estimator per setting; ratio > 1 means the estimator beats sampling at its FLOPs.",
        "calibration": "Calibration over the ensemble of networks and units (reported, not judged).",
    }
    if "rare" in metrics:
        figures["rare_mse_vs_flops"] = mse_figure(metrics["rare"], cfg.rare_widths, [3], "rare event (bias -3, Heaviside)")
        tables["rare"] = mlp_table(metrics["rare"])
        captions["rare_mse_vs_flops"] = "Rare-event variant: probabilities P(unit fires) ~ 1e-3."
    if metrics.get("basis"):
        figures["basis_damage"] = basis_figure(metrics["basis"])
        tables["basis"] = basis_table(metrics["basis"])
        captions["basis"] = ("Presume the codes of a basis independent (permute each column), decode, run the rest. "
                             "Mean error: squared error of E[output] over the output's total variance.")
    return Result(experiment=exp.name, title=exp.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
                  metrics=metrics, verdicts=verdicts, tables=tables, figures=figures, captions=captions,
                  summary=_summary(metrics, verdicts))


def ratio(m: dict[str, Any]) -> float:
    """The best estimator's advantage over sampling at equal FLOPs, as a plain ratio."""
    return float(10 ** m["best"]["log10_ratio_vs_mc"]) if math.isfinite(m["best"]["log10_ratio_vs_mc"]) else math.nan
