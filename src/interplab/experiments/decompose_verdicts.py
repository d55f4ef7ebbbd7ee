"""The verdicts of `decompose`: the SAE against sign-split PCA on each aspect of the crux.

The SAE compared is chosen on training rows (`pick_sae`); statistics are signed so that > 0
favours the SAE; CIs are paired bootstraps over the shared evaluation batches where both methods
carry per-batch values (FVU, delta CE), else the two marginal CIs combined as if independent.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from interplab.experiments.base import CI, Verdict, bootstrap_ci, decide

CRUX = "sparse codes (SAE) give more faithful and more interpretable features than PCA at matched budget"


def difference(a: dict[str, Any], b: dict[str, Any], key: str, n_boot: int, seed: int) -> tuple[float, CI, str]:
    """a[key] - b[key] and its 95% CI: a paired bootstrap over the shared evaluation batches where
    both carry per-batch values, else the two marginal CIs combined as if independent."""
    pa, pb = a["details"].get(f"per_batch_{key}"), b["details"].get(f"per_batch_{key}")
    if pa and pb:
        diff = np.asarray(pa, dtype=float) - np.asarray(pb, dtype=float)  # (n_batches,)
        return float(diff.mean()), bootstrap_ci(diff, n_boot=max(n_boot, 1), seed=seed), "paired bootstrap over batches"
    va, vb = a.get(key), b.get(key)
    if va is None or vb is None:
        return math.nan, CI(math.nan, math.nan), "undefined"
    (la, ha), (lb, hb) = a["ci"].get(key, (math.nan, math.nan)), b["ci"].get(key, (math.nan, math.nan))
    d = va - vb
    low = d - math.hypot(va - la, hb - vb)
    high = d + math.hypot(ha - va, vb - lb)
    return d, CI(low, high), "marginal CIs combined as if independent (conservative)"


def pick_sae(res: dict[str, dict[str, Any]], k: int, slack: float) -> str | None:
    """The within-budget SAE with the lowest FVU, both judged on training rows (`select_l0`,
    `select_fvu`): choosing on the held-out batches that then score the verdict would favour the
    SAE by the luck of the draw (a winner's curse)."""
    ok = [m for m, r in res.items() if r["sae"] and r["select_l0"] <= k * (1 + slack) + 1e-9]
    return min(ok, key=lambda m: res[m]["select_fvu"]) if ok else None


def verdicts_for(key: str, res: dict[str, dict[str, Any]], k: int, cfg: Any) -> list[Verdict]:
    """The crux on one subject at budget k, one verdict per aspect the subject defines."""
    sae = pick_sae(res, k, cfg.budget_slack)
    pca = next((m for m in ("pca", "pca-rank") if m in res), None)  # sign-split unless only rank was run
    if sae is None or pca is None:
        return []
    kind = "sign-split" if pca == "pca" else "rank-k"
    s, p = res[sae], res[pca]
    interp = "interp_score" if s.get("interp_score") is not None else "mcc"
    aspects = [("fvu", "faithful: reconstruction, FVU(PCA) - FVU(SAE)", p, s),
               ("delta_ce_nats", "faithful: loss when spliced in, ΔCE(PCA) - ΔCE(SAE)", p, s),
               (interp, f"interpretable: {interp}(SAE) - {interp}(PCA)", s, p)]
    out = []
    for metric, what, a, b in aspects:
        if a.get(metric) is None or b.get(metric) is None:
            continue
        stat, ci, how = difference(a, b, metric, cfg.n_boot, cfg.seed)
        word = decide(ci, 0.0)
        winner = {"supported": "the SAE wins", "not supported": "PCA wins"}.get(word, "no clear winner")
        note = (f"k={k}: {sae} (L0 {s['l0']:.3g}) {metric}={s[metric]:.4g} against {kind} PCA (L0 {p['l0']:.3g}) "
                f"{metric}={p[metric]:.4g}; {winner}. Statistic > 0 favours the SAE; CI: {how}. The SAE is the "
                "within-budget one with the lowest FVU on training rows. ΔCE is in nats for LMs, in the subject's own loss "
                "for toy models.")
        out.append(Verdict(f"{CRUX} — {what}", stat, (ci.low, ci.high), 0.0, word, subject=f"{key} @ k={k}", note=note))
    return out
