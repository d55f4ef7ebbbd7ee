"""Figures, tables and the Result of the mad experiment: AUROC heat map, ROC curves, per-seed subjects."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from interplab.experiments.base import Experiment, Result
from interplab.experiments.mad_pipeline import Table
from interplab.mad import roc_points
from interplab.verdicts import Verdict, from_refits


def _mean(col: np.ndarray) -> float:
    col = col[np.isfinite(col)]
    return float(col.mean()) if col.size else float("nan")


def auroc_metrics(tables: dict[str, Table], twins: dict[str, Table]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case, t in tables.items():
        out[case] = {}
        for j, key in enumerate(t.keys):
            ci = from_refits(t.clean[:, j], 0.5, "t over seeds").ci
            row = {"family": t.families[j], "clean": _mean(t.clean[:, j]), "clean_ci": list(ci),
                   "control": _mean(t.control[:, j]), "ctrl_clean": _mean(t.ctrl_clean[:, j]),
                   "fpr95": _mean(t.fpr[:, j]), "per_seed_clean": t.clean[:, j].tolist(),
                   "per_seed_control": t.control[:, j].tolist()}
            if case in twins:
                row["twin_clean"] = _mean(twins[case].clean[:, twins[case].column(key)])
            out[case][key] = row
    return out


def subjects_table(facts: dict[str, Any]) -> dict[str, list]:
    rows = [[kind, seed, f["asr"], f["asr_twin"], f["acc"], f["acc_twin"], f["control_acc"], f["control_acc_twin"],
             "yes" if f["took"] else "no (left out)"] for kind, per in facts.items() for seed, f in per.items()]
    return {"columns": ["subject", "seed", "attack success", "attack success (twin)", "clean accuracy",
                        "clean accuracy (twin)", "control accuracy", "control accuracy (twin)", "backdoor took"],
            "rows": rows}


def auroc_table(metrics: dict[str, Any]) -> dict[str, list]:
    rows = []
    for case, per in metrics.items():
        for key, m in per.items():
            det, site = key.split("@", 1)
            rows.append([case, det, site, m["family"], m["clean"], f"[{m['clean_ci'][0]:.3f}, {m['clean_ci'][1]:.3f}]",
                         m["control"], m["ctrl_clean"], m["fpr95"], m.get("twin_clean", float("nan"))])
    return {"columns": ["case", "detector", "site", "family", "AUROC triggered vs clean", "95% CI (seeds)",
                        "AUROC triggered vs control", "AUROC control vs clean", "FPR at 95% recall",
                        "AUROC on the clean twin"], "rows": rows}


def heatmap(metrics: dict[str, Any]) -> Figure:
    """Mean AUROC per (detector@site) x case: triggered vs clean, and triggered vs control."""
    cases = list(metrics)
    keys = list(dict.fromkeys(k.replace("@hidden.", "@L").replace("@resid_post.", "@resid.")
                              .replace("@attn_out.", "@attn.") for c in cases for k in metrics[c]))
    raw = {c: {k.replace("@hidden.", "@L").replace("@resid_post.", "@resid.").replace("@attn_out.", "@attn."): v
               for k, v in metrics[c].items()} for c in cases}
    fig = Figure(figsize=(3.2 + 1.6 * len(cases), 0.26 * len(keys) + 1.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, what, title in zip(axes, ("clean", "control"), ("triggered vs clean", "triggered vs control"), strict=True):
        M = np.array([[raw[c].get(k, {}).get(what, np.nan) for c in cases] for k in keys])  # (keys, cases)
        im = ax.imshow(M, vmin=0, vmax=1, cmap="RdBu_r", aspect="auto")
        for (i, j), v in np.ndenumerate(M):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(cases)), [c.replace("-backdoor", "").replace("/", "\n") for c in cases], fontsize=7)
        ax.set_yticks(range(len(keys)), keys, fontsize=6)
        ax.set_title(f"AUROC, {title}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="AUROC (mean over seeds)")
    return fig


def roc_figure(tables: dict[str, Table]) -> Figure:
    """ROC curves on the first seed of each case: every detector at its site of highest mean AUROC."""
    cases = list(tables)
    fig = Figure(figsize=(3.3 * len(cases), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cases)))
    for ax, case in zip(axes, cases, strict=True):
        t = tables[case]
        best: dict[str, int] = {}
        for j, key in enumerate(t.keys):
            det = key.split("@")[0] + ("@logits" if key.endswith("@logits") else "")
            if det not in best or _mean(t.clean[:, j]) > _mean(t.clean[:, best[det]]):
                best[det] = j
        for i, (det, j) in enumerate(best.items()):
            s = t.scores.get((t.seeds[0], t.keys[j]))
            if s is None:
                continue
            fpr, tpr = roc_points(s["normal"], s["anomalous"])
            ax.plot(fpr, tpr, lw=1, color=f"C{i % 10}", ls="-" if i < 10 else "--", label=t.keys[j])
        ax.plot([0, 1], [0, 1], "k:", lw=0.6)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"{case} (seed {t.seeds[0]})")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=5, loc="lower right")
    return fig


def result(exp: Experiment, cfg: Any, facts: dict[str, Any], tables: dict[str, Table], twins: dict[str, Table],
           verdicts: list[Verdict], chosen: dict[str, Any]) -> Result:
    metrics = auroc_metrics(tables, twins)
    best = []
    for case, per in metrics.items():
        key = max(per, key=lambda k: np.nan_to_num(per[k]["clean"], nan=-1))
        best.append(f"{case}: {key} {per[key]['clean']:.3f}")
    took = {k: sum(f["took"] for f in per.values()) for k, per in facts.items()}
    figures = {"auroc_heatmap": heatmap(metrics), "roc": roc_figure(tables)} if tables else {}
    return Result(
        experiment=exp.name, title=exp.title,
        metrics={"subjects": {k: {str(s): f for s, f in per.items()} for k, per in facts.items()},
                 "auroc": metrics, "chosen": chosen},
        verdicts=verdicts,
        tables={"subjects": subjects_table(facts), "auroc": auroc_table(metrics)},
        figures=figures,
        captions={
            "auroc_heatmap": "Mean AUROC over backdoor training seeds of every detector at every scored site "
                             "(attn/resid: the prediction position; L: hidden layer; logits: output-only).",
            "roc": "ROC curves, triggered vs clean, first seed of each case: each detector at its best site "
                   "(chosen for display only; verdicts choose leave-one-seed-out).",
            "subjects": f"Attack success (share of triggered inputs given the forced output) and accuracies; a seed "
                        f"is used only if its attack success reaches {cfg.asr_min}.",
            "auroc": "Per detector and site: mean AUROC over seeds (95% t interval), against the off-distribution "
                     "control, how much the control alone is flagged, FPR at 95% recall.",
        },
        summary=f"Backdoors took on {took} seeds. Best mean AUROC (triggered vs clean, best chosen on all seeds, "
                f"for display): {'; '.join(best)}.",
    )
