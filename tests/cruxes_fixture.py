"""Hand-written results.json documents shaped like a full `interplab cruxes` run (8 experiments,
~65 verdicts), for the report tests: the experiments themselves are rewritten independently, so the
report is tested against the documented shapes, not against whatever they emit today."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

CTL = {"pass": True, "fail": False}

# experiment -> [(crux id, kind, primary, [subjects], [(statistic, ci, status, pos, neg), ...])]
EXPERIMENTS: list[tuple[str, str, list[tuple[str, str, bool, list[str]]]]] = [
    ("decompose", "Sparse autoencoders against PCA at matched budgets", [
        ("sae-fvu", "finding", True, ["synthetic/hidden", "tms/hidden", "smollm2/resid_post.6"]),
        ("sae-dce", "finding", True, ["synthetic/hidden", "tms/hidden", "smollm2/resid_post.6"]),
        ("sae-recovery", "finding", True, ["synthetic/hidden", "tms/hidden"]),
        ("sae-interp", "finding", True, ["smollm2/resid_post.6"]),
        ("sae-fvu-batchmean", "finding", False, ["synthetic/hidden", "tms/hidden", "smollm2/resid_post.6"]),
        ("sae-interp-raw", "finding", False, ["smollm2/resid_post.6"]),
    ]),
    ("superposition", "Toy Models of Superposition reproduced", [
        ("tms-phase", "finding", True, ["tms relu 2→1"]),
        ("tms-sticky", "finding", True, ["tms relu 2→1"]),
        ("tms-neuron", "finding", True, ["tms relu 2→1"]),
        ("tms-sticky-d1", "finding", False, ["tms relu 2→1"]),
    ]),
    ("hypotheses", "Polysemanticity, sparsity and superposition against a null", [
        ("1a", "finding", True, ["tms 20→5", "planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("1b", "finding", True, ["tms 20→5", "planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("basis", "finding", True, ["tms 20→5", "planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("2a", "finding", True, ["tms 20→5", "planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("2b", "finding", True, ["tms 20→5"]),
        ("2b-width", "finding", True, ["planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("1a-signblind", "finding", False, ["tms 20→5", "planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("1a-frac", "finding", False, ["tms 20→5", "planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("1b-frac", "finding", False, ["tms 20→5", "planted 256 in 64", "smollm2 mlp_hidden.6"]),
        ("2a-input", "harness", True, ["tms 20→5"]),
        ("2b-planted", "harness", True, ["planted 256 in 64"]),
    ]),
    ("estimators", "Heuristic estimators against sampling at equal compute", [
        ("est-mlp", "finding", True, ["random ReLU MLPs"]),
        ("est-rare", "finding", True, ["random ReLU MLPs"]),
        ("est-basis", "finding", True, ["tms 20→5", "smollm2 resid_post.3"]),
        ("est-basis-loss", "finding", False, ["tms 20→5", "smollm2 resid_post.3"]),
    ]),
    ("lpe", "Low-probability estimation below the sampling floor", [
        ("lpe-is-vs-ae", "finding", True, ["chartf 1/2/4-layer, 6 groups"]),
        ("lpe-is-vs-naive", "finding", True, ["chartf 1/2/4-layer, 6 groups"]),
        ("lpe-ae-vs-naive", "finding", True, ["chartf 1/2/4-layer, 6 groups"]),
    ]),
    ("loss-explained", "Loss explained by n features: PCA against SAEs", [
        ("lx-share", "finding", True, ["smollm2 resid_post.6", "ladder of 4 models"]),
        ("lx-sae-vs-pca", "finding", True, ["smollm2 resid_post.6", "ladder of 4 models"]),
        ("lx-compute", "finding", True, ["ladder of 4 models"]),
    ]),
    ("explanations", "Proofs and surprise accounting on max-of-k", [
        ("proof-length", "finding", True, ["max-of-4"]),
        ("surprise-bits", "finding", True, ["max-of-4"]),
        ("surprise-vs-proof", "finding", True, ["max-of-4"]),
    ]),
    ("mad", "Mechanistic anomaly detection on backdoored subjects", [
        ("mad-auroc", "finding", True, ["backdoored MLP", "backdoored tiny LM"]),
        ("mad-vs-acts", "finding", True, ["backdoored MLP", "backdoored tiny LM"]),
        ("mad-offdist", "finding", True, ["backdoored MLP", "backdoored tiny LM"]),
    ]),
]
STATUSES = ["counted", "counted", "uncalibrated", "counted", "needs --scale default", "counted", "uncalibrated"]
WORDS = ["supported", "not supported", "inconclusive"]
NOTE = "SAE latents stand in for the unknown features of the LM (a proxy); see the protocol."


def protocol(crux: str, experiment: str, kind: str, primary: bool) -> dict[str, Any]:
    return {
        "id": crux, "experiment": experiment, "question": f"Does the claim of {crux} hold up on real subjects?",
        "claim": f"the claim of {crux}", "statistic": f"the statistic of {crux}, per refit, averaged",
        "null": "0", "direction": "higher", "unit": "SAE refits with different seeds (3 at the cruxes scale)",
        "positive_control": "a planted case where the claim is true by construction",
        "negative_control": "a planted case where the claim is false by construction",
        "family": "harness" if kind == "harness" else experiment, "min_scale": "small", "kind": kind,
        "primary": primary, "supersedes": None, "why": "" if primary else "replaced by a better definition",
    }


def control(passed: bool, positive: bool) -> dict[str, Any]:
    word = "supported" if passed == positive else ("inconclusive" if positive else "supported")
    return {"what": "planted", "ran": True, "passed": passed, "verdict": word, "statistic": 0.5, "ci": [0.2, 0.8],
            "null": 0.0, "how": "t over 3 refits"}


def verdict(crux: str, subject: str, kind: str, primary: bool, i: int) -> dict[str, Any]:
    word = WORDS[i % 3]
    status = "harness check" if kind == "harness" else ("superseded" if not primary else STATUSES[i % len(STATUSES)])
    stat = round(float(np.sin(i + 1)) * 3, 4)
    pos_ok, neg_ok = (status != "uncalibrated") or (i % 2 == 0), status != "uncalibrated" or (i % 2 == 1)
    controls = ({"positive": {"what": "—", "ran": False, "passed": False, "verdict": "not run"},
                 "negative": {"what": "—", "ran": False, "passed": False, "verdict": "not run"}}
                if kind == "harness" else {"positive": control(pos_ok, True), "negative": control(neg_ok, False)})
    return {
        "crux": crux, "question": f"Does the claim of {crux} hold up on real subjects?", "statistic": stat,
        "ci": [round(stat - 0.4, 4), round(stat + 0.35, 4)], "null": 0.0,
        "verdict": "needs --scale default" if status == "needs --scale default" else word, "raw_verdict": word,
        "subject": subject, "note": NOTE if "smollm2" in subject else "", "status": status, "controls": controls,
        "p": 0.01 * (i % 7), "p_holm": min(1.0, 0.03 * (i % 7)), "verdict_holm": word, "family": crux.split("-")[0],
        "primary": primary, "how": "t over 3 SAE refits + batch bootstrap", "scale": "small",
    }


def _figure(seed: int) -> Figure:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    x = np.linspace(0, 4, 50)
    ax.plot(x, np.sin(x + seed), label="interplab")
    ax.plot(x, np.cos(x * (1 + seed / 5)), label="baseline")
    ax.legend()
    ax.set_title(f"key figure {seed}")
    return fig


def write_cruxes_run(root: Path) -> tuple[list[dict[str, Any]], int]:
    """Write every experiment's results.json (with a key figure PNG) under `root`; return the
    entries `render_index` takes and the number of verdicts."""
    from interplab.report.runs import entry

    entries, i = [], 0
    for n, (name, title, cruxes) in enumerate(EXPERIMENTS):
        verdicts, protocols = [], {}
        for crux, kind, primary, subjects in cruxes:
            protocols[crux] = protocol(crux, name, kind, primary)
            for subject in subjects:
                verdicts.append(verdict(crux, subject, kind, primary, i))
                i += 1
        folder = root / name
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        _figure(n).savefig(folder / "figures" / "key.png", dpi=80)
        data = {"experiment": name, "title": title, "interplab_version": "0.1.0", "config": {"seed": 0}, "seed": 0,
                "seconds": 12.5 + n, "summary": f"What {name} found.", "metrics": {}, "verdicts": verdicts,
                "tables": {}, "figures": {"key": "figures/key.png"}, "captions": {"key": f"The key figure of {name}"},
                "key_figure": "key", "scale": "small", "code_hash": "0" * 64, "cruxes": protocols}
        (folder / "results.json").write_text(json.dumps(data, indent=1))
        entries.append(entry(name, data))
    rows = [{"experiment": e["name"], **v} for e in entries for v in e["verdicts"]]
    doc = {"interplab_version": "0.1.0", "code_hash": "0" * 64, "experiments": [
        {"name": e["name"], "title": e["title"], "seconds": e["seconds"], "reused": False} for e in entries],
        "cruxes": {k: v for e in entries for k, v in e["cruxes"].items()}, "verdicts": rows}
    (root / "cruxes.json").write_text(json.dumps(doc, indent=1))
    return entries, i
