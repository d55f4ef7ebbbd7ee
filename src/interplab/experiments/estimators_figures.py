"""Figures, tables and the Result of the estimators experiment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullLocator

from interplab.experiments.base import Experiment, Result, Verdict

_MARKERS = {"mean": "o", "cov": "s", "cumulant": "^"}


def _estimators(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The propagation estimators' entries of one setting's metrics."""
    return {k: v for k, v in m.items() if isinstance(v, dict) and "advantage" in v}


def _panel(ax: Any, m: dict[str, Any], title: str) -> None:
    """One setting: Monte Carlo's nmse against FLOPs (with 1/N), the estimators as points."""
    per_sample = m["best"]["mc_flops_per_sample"]
    mc = sorted((v["flops"], v["nmse"]) for k, v in m.items() if k.startswith("montecarlo"))
    if mc:
        f = np.array([p[0] for p in mc])
        ax.plot(f, np.maximum([p[1] for p in mc], 1e-12), "k.-", lw=1, label="Monte Carlo (measured)")
    est = _estimators(m)
    lo = min([per_sample] + [v["flops"] for v in est.values()])
    hi = max(f.max() if mc else per_sample, lo * 10)
    xs = np.geomspace(lo / 2, hi * 2, 20)
    ax.plot(xs, per_sample / np.maximum(xs, per_sample), "k:", lw=0.8, label="Monte Carlo 1/N")
    ax.axhline(m["zero"]["nmse"], color="C7", lw=0.6, ls="-.", label="estimate 0")
    for i, (k, v) in enumerate(est.items()):
        resolved = v["nmse"] > 2 * v["se"]  # else drawn hollow at its resolution, 2 SE
        marker = _MARKERS.get(k.split("_")[0], "D")
        ax.plot([v["flops"]], [max(v["nmse"], 2 * v["se"], 1e-12)], marker, color=f"C{i}", ms=6, ls="none",
                mfc=f"C{i}" if resolved else "none", label=k)
    ax.set(xscale="log", yscale="log", title=title)
    for axis in (ax.xaxis, ax.yaxis):  # minor log ticks were three quarters of the figure's drawing time
        axis.set_major_locator(LogLocator(numticks=5))
        axis.set_minor_locator(NullLocator())
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
    fig.suptitle(f"{what}: final-layer mean, error against FLOPs (hollow: below the truth's resolution, drawn at 2 SE)",
                 fontsize=9)
    return fig


def mlp_table(metrics: dict[str, Any]) -> dict[str, list]:
    rows = []
    for label, m in metrics.items():
        per_sample = m["best"]["mc_flops_per_sample"]
        for k, v in m.items():
            if not isinstance(v, dict) or "flops" not in v:
                continue
            n_eq = max(v["flops"] / per_sample, 1.0)
            adv = v.get("advantage", math.log10((1 / n_eq) / v["nmse"]) if v["nmse"] > 0 else math.nan)
            rows.append([label, k + (" *" if k == m["best"]["method"] else ""), v["nmse"], v.get("se", math.nan),
                         v["flops"], 1 / n_eq, m["zero"]["nmse"], adv])
    return {"columns": ["setting", "method (* = ranked best)", "nmse", "SE (truth)", "FLOPs",
                        "MC nmse at equal FLOPs (1/N)", "nmse of the estimate 0", "log10 advantage"], "rows": rows}


def calibration_table(calib: dict[str, Any]) -> dict[str, list]:
    rows = [[label, k, v["mean_error"], v["slope"], v["intercept"]]
            for label, per in calib.items() for k, v in per.items()]
    return {"columns": ["setting", "method", "mean (Y - G) / sd", "slope of Y on G", "intercept"], "rows": rows}


def basis_table(basis: dict[str, Any]) -> dict[str, list]:
    rows = [[subject, b, v["mean_error"], v["delta_loss"], v["recon_delta_loss"], v["clean_loss"]]
            for subject, per in basis.items() for b, v in per.items() if isinstance(v, dict)]
    return {"columns": ["subject", "basis", "mean error (normalised; est-basis)", "delta loss (round 1)",
                        "delta loss (reconstruction only)", "clean loss"], "rows": rows}


def basis_figure(basis: dict[str, Any]) -> Figure:
    """Per subject: the error of the predicted output mean (est-basis) and the round-1 loss increase."""
    subjects = list(basis)
    fig = Figure(figsize=(4.2 * len(subjects), 5.6), layout="constrained")
    axes = fig.subplots(2, len(subjects), squeeze=False)
    for c, subject in enumerate(subjects):
        per = {b: v for b, v in basis[subject].items() if isinstance(v, dict)}
        names = list(per)
        for r, (key, label) in enumerate((("mean_error", "error of E[output] (normalised)"),
                                          ("delta_loss", "loss increase (round 1)"))):
            ax = axes[r, c]
            ax.bar(names, [per[b][key] for b in names], color=[f"C{i}" for i in range(len(names))], alpha=0.6)
            for i, b in enumerate(names):
                draws = per[b].get(f"per_draw_{key}", [])
                ax.plot([i] * len(draws), draws, "k.", ms=3)
            ax.set(title=subject if r == 0 else "", ylabel=label)
            ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.suptitle("Presuming the codes of a basis independent (dots: independent draws)", fontsize=9)
    return fig


def _summary(metrics: dict[str, Any], verdicts: list[Verdict]) -> str:
    parts = [f"{label}: {m['best']['method']} {ratio(m):.3g}x" for label, m in metrics["mlp"].items()]
    text = ("Best-ranked propagation estimator against the better of Monte Carlo at equal FLOPs and the estimate 0, "
            "mean over scored networks (a lower bound; >1 favours propagation): " + "; ".join(parts) + ".")
    for subject, per in metrics.get("basis", {}).items():
        least = min((b for b in per if isinstance(per[b], dict)), key=lambda b: per[b]["mean_error"])
        text += f" Basis study, {subject}: smallest error of the predicted output mean in the {least} basis."
    counted = [v for v in verdicts if v.counted]
    supported = sum(v.verdict == "supported" for v in counted)
    return text + f" {supported} of {len(counted)} counted verdicts supported ({len(verdicts)} in all)."


def result(exp: Experiment, cfg: Any, metrics: dict[str, Any], verdicts: list[Verdict]) -> Result:
    figures = {"mse_vs_flops": mse_figure(metrics["mlp"], cfg.widths, cfg.depths, "random ReLU MLPs")}
    tables = {"mlp": mlp_table(metrics["mlp"]), "calibration": calibration_table(metrics["calibration"])}
    captions = {
        "mse_vs_flops": "Variance-normalised MSE of the final-layer mean (ground truth from "
        f"2^{cfg.truth_log2} samples in {cfg.truth_chunks} chunks, U-statistic) against FLOPs counted from "
        "operations, means over the scored networks. Black: Monte Carlo measured on the ranking networks; dotted: "
        "its expectation 1/N. Points: propagation estimators (hollow: below the truth's resolution, drawn at it).",
        "mlp": "Every estimator per setting (means over the scored networks). log10 advantage: of the better of "
               "Monte Carlo at equal FLOPs and the estimate 0 over the estimator's nmse + 2 SE (> 0 favours the "
               "estimator; a lower bound).",
        "calibration": "Calibration over the ensemble of networks and units (reported, not judged).",
    }
    if "rare" in metrics:
        figures["rare_mse_vs_flops"] = mse_figure(metrics["rare"], cfg.rare_widths, [3], "rare event (bias -3, Heaviside)")
        tables["rare"] = mlp_table(metrics["rare"])
        captions["rare_mse_vs_flops"] = ("Rare-event variant: probabilities P(unit fires), about 0.02 on average at He "
                                         "initialisation (the verdict note gives the measured mean).")
    if metrics.get("basis"):
        figures["basis_damage"] = basis_figure(metrics["basis"])
        tables["basis"] = basis_table(metrics["basis"])
        captions["basis"] = ("Presume the codes of a basis independent (permute each code column, and each coordinate "
                             "of what the basis does not reconstruct), decode, run the rest; means over independent "
                             "draws. Mean error (est-basis): squared error of E[output] over the output's total "
                             "variance. Delta loss (round 1, superseded): permuted rows scored against their "
                             "original targets, which rewards a basis that shrinks the output's variance.")
    return Result(experiment=exp.name, title=exp.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
                  metrics=metrics, verdicts=verdicts, tables=tables, figures=figures, captions=captions,
                  summary=_summary(metrics, verdicts))


def ratio(m: dict[str, Any]) -> float:
    """The best estimator's advantage over sampling at equal FLOPs, as a plain ratio."""
    v = m["best"]["log10_advantage"]
    return float(10 ** v) if v is not None and math.isfinite(v) else math.nan
