"""Tables, figures and the Result of the explanations experiment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from interplab.experiments.base import Result

COST = {"brute-force": "V^(k+1)", "cubic": "V^3 k^2", "subcubic": "V^2 d + V^2 k log V",
        "subcubic-rank1": "V d iters + V^2 d (OV) + V^2 k log V", "independence": "V^3 + V^2 k (V outputs)",
        "sampling": "the estimate's FLOPs"}
ORDER = ("brute-force", "cubic", "subcubic", "subcubic-rank1")
EXPLANATIONS = ("no explanation", "brute force", "cubic", "subcubic", "subcubic-rank1", "independence")


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    if a.size == 0:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def summary(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per k: per strategy the bound's mean/sd, FLOPs, unexplained dimension; per estimate its error."""
    out: dict[str, Any] = {}
    for k in sorted({r["k"] for r in models.values()}):
        recs = [r for r in models.values() if r["k"] == k]
        block: dict[str, Any] = {"truth": _ms([r["truth"] for r in recs])}
        for name in ORDER:
            rows = [r["strategies"][name] for r in recs if name in r["strategies"]]
            if rows:
                block[name] = {"bound": _ms([s["bound"] for s in rows]), "flops": _ms([s["flops"] for s in rows])["mean"],
                               "unexplained_dim": rows[0]["unexplained_dim"],
                               "normalised": _ms([r["strategies"][name]["bound"] / r["truth"] for r in recs
                                                  if r["truth"] and name in r["strategies"]])}
        for name in ("independence", "sampling"):
            es = [r["estimates"][name] for r in recs]
            block[name] = {"estimate": _ms([e["accuracy"] for e in es]), "flops": _ms([e["flops"] for e in es])["mean"],
                           "abs_error": _ms([abs(e["error"]) for e in es if "error" in e])}
        out[f"k{k}"] = block
    return out


def ledger_means(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean bits per explanation over the seeds, and the bits in the weights."""
    out: dict[str, Any] = {}
    for name in EXPLANATIONS:
        lgs = [r["ledgers"]["explanations"][name] for r in seeds]
        out[name] = {key: _ms([lg[key] for lg in lgs]) for key in ("explanation_bits", "behaviour_bits", "total_bits")}
    out["weights"] = {"bits": _ms([r["ledgers"]["weight_bits"] for r in seeds]),
                      "bits_per_param": _ms([r["ledgers"]["bits_per_param"] for r in seeds]),
                      "n_params": seeds[0]["n_params"]}
    return out


def _fmt(m: dict[str, float], digits: int = 4) -> str:
    return "-" if not m.get("n") else f"{m['mean']:.{digits}f} ± {m['sd']:.{digits}f}"


def proofs_table(summ: dict[str, Any]) -> dict[str, list]:
    rows = []
    for kk, block in summ.items():
        for name in ORDER:
            if name in block:
                b = block[name]
                rows.append([kk, name, COST[name], f"{b['flops']:.3g}", _fmt(b["bound"]), _fmt(b["normalised"]),
                             f"{b['unexplained_dim']:,}", b["bound"]["n"]])
        for name in ("independence", "sampling"):
            b = block[name]
            rows.append([kk, f"{name} (estimate)", COST[name], f"{b['flops']:.3g}", _fmt(b["estimate"]),
                         "|error| " + _fmt(b["abs_error"], 6), "-", b["estimate"]["n"]])
    return {"columns": ["k", "strategy", "cost", "FLOPs (mean)", "bound mean ± sd", "bound / truth", "unexplained dim",
                        "models"], "rows": rows}


def surprise_table(means: dict[str, Any]) -> dict[str, list]:
    rows = [[name, _fmt(m["explanation_bits"], 0), _fmt(m["behaviour_bits"], 0), _fmt(m["total_bits"], 0)]
            for name, m in means.items() if name != "weights"]
    w = means["weights"]
    rows.append([f"the weights ({w['n_params']} params x {w['bits_per_param']['mean']:.1f} bits)", "-", "-",
                 _fmt(w["bits"], 0)])
    return {"columns": ["explanation", "claims (bits)", "behaviour given it (bits)", "total (bits)"], "rows": rows}


def frontier_figure(models: dict[str, dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    colours = {"brute-force": "k", "cubic": "C0", "subcubic": "C1", "subcubic-rank1": "C2", "independence": "C3",
               "sampling": "C4"}
    for k, marker in [(4, "o"), (5, "s"), (6, "^")]:
        recs = [r for r in models.values() if r["k"] == k]
        for name, colour in colours.items():
            src = [(r["strategies"][name]["flops"], r["strategies"][name]["bound"]) for r in recs
                   if name in r["strategies"]] or [(r["estimates"][name]["flops"], r["estimates"][name]["accuracy"])
                                                    for r in recs if name in r.get("estimates", {})]
            if not src:
                continue
            x, y = zip(*src, strict=True)
            hollow = name in ("independence", "sampling")
            ax.scatter(x, y, marker=marker, s=22, alpha=0.6, facecolors="none" if hollow else colour,
                       edgecolors=colour, label=f"{name} (k={k})")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs")
    ax.set_ylabel("accuracy: certified bound (filled) or estimate (hollow)")
    ax.legend(fontsize=6.5, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def surprise_figure(means: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    names = [n for n in means if n != "weights"]
    claims = [max(means[n]["explanation_bits"]["mean"], 1e-9) for n in names]
    behaviour = [max(means[n]["behaviour_bits"]["mean"], 1e-9) for n in names]
    x = np.arange(len(names))
    ax.bar(x, claims, label="claims on the weights")
    ax.bar(x, behaviour, bottom=claims, label="behaviour given the explanation")
    ax.axhline(means["weights"]["bits"]["mean"], color="k", ls="--", lw=1, label="bits in the weights")
    ax.set_yscale("log")
    ax.set_ylim(1e2, 3 * max(c + b for c, b in zip(claims, behaviour, strict=True)))
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.set_ylabel("bits (mean over seeds)")
    ax.legend(fontsize=8)
    return fig


def result(exp, cfg, metrics: dict[str, Any], verdicts) -> Result:
    summ = metrics["summary"]
    tables = {"proofs": proofs_table(summ), "surprise": surprise_table(metrics["ledgers"])}
    first = next(r for r in metrics["models"].values() if "ledgers" in r)
    tables["ledger_one_seed"] = {"columns": ["ledger of the first k = 4 seed"],
                                 "rows": [[line] for line in first["ledgers"]["text"].splitlines()]}
    figures = {"frontier": frontier_figure(metrics["models"]), "surprise": surprise_figure(metrics["ledgers"])}
    captions = {
        "proofs": "Certified bounds (brute force is exact) and uncertified estimates per strategy: FLOPs counted "
                  "from operations, bound mean ± sd over seeds, unexplained dimension as in Gross et al. 2024.",
        "surprise": "Surprise accounting (k = 4): bits of each explanation's claims under the initialisation prior, "
                    "bits of the per-input correctness given it, and the bits in the weights.",
        "frontier": "Bound (or estimate) against FLOPs, one point per seed and strategy.",
        "surprise_fig": "Mean bits per explanation, claims and behaviour stacked; dashed: the bits in the weights.",
    }
    k4 = summ.get("k4", {})
    text = ", ".join(f"{n} {k4[n]['bound']['mean']:.4f}" for n in ORDER if n in k4)
    return Result(exp.name, exp.title, metrics=metrics, verdicts=verdicts, tables=tables, figures=figures,
                  captions=captions, summary=f"k = 4, mean over {cfg.seeds} seeds: {text}.")
