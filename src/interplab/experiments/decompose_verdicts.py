"""The verdicts of `decompose`: the SAE against sign-split PCA on each aspect of the crux.

Definitions live in `interplab.verdicts.catalog.decompose`. Here evidence is built from paired
scorecards (`interplab.metrics.paired`) and judged with the controls:

- the SAE compared is chosen on training rows (`pick_sae`), once per subject and budget, from the
  first seed's fits; it is then refitted with further seeds. PCA is deterministic;
- per refit s the statistic is stat(PCA) - stat(SAE_s) for lower-is-better aspects (FVU, loss
  increase) and stat(SAE_s) - stat(PCA) otherwise, each pooled over all held-out batches;
- the CI is a t interval over the refits plus the variance of the refits' mean over resampled
  batches (every refit is scored on the same batches, so that part does not show in their spread);
- the round-1 FVU statistic (mean of per-batch FVU differences, one fit, batch bootstrap) is still
  computed beside it as the non-primary `sae-fvu-batchmean`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from interplab.metrics.paired import Aspect
from interplab.verdicts import Evidence, Verdict, from_boots, from_refits, judge

ASPECT = {
    "sae-fvu": ("FVU", "FVU(PCA) - FVU(SAE)"),
    "sae-fvu-batchmean": ("FVU, round-1 form", "mean over batches of FVU_b(PCA) - FVU_b(SAE), seed 0"),
    "sae-dce": ("loss when spliced in", "ΔCE(PCA) - ΔCE(SAE)"),
    "sae-recovery": ("recovery", "MCC(SAE) - MCC(PCA)"),
    "sae-interp": ("interpretability", "interp_adjusted(SAE) - interp_adjusted(PCA)"),
    "sae-interp-raw": ("interpretability, unadjusted", "interp(SAE) - interp(PCA)"),
}


def pick_sae(res: dict[str, dict[str, Any]], k: int, slack: float) -> str | None:
    """The within-budget SAE with the lowest FVU, both judged on training rows (`select_l0`,
    `select_fvu`): choosing on the held-out batches that then score the verdict would favour the
    SAE by the luck of the draw (a winner's curse)."""
    ok = [m for m, r in res.items() if r["sae"] and r["select_l0"] <= k * (1 + slack) + 1e-9]
    return min(ok, key=lambda m: res[m]["select_fvu"]) if ok else None


def refit_evidence(pca: Aspect, saes: Sequence[Aspect], sae_is_lower: bool) -> Evidence:
    """Evidence over SAE refits against deterministic PCA, > 0 favouring the SAE.

    Per refit: pca - sae when lower is better (`sae_is_lower`), else sae - pca. The sampling
    variance is the variance over resampled batches of the refits' mean difference (the replicates
    of every method share their resamples, so the difference is paired)."""
    sign = 1.0 if sae_is_lower else -1.0
    per_fit = [sign * (pca.value - s.value) for s in saes]
    reps = np.mean([sign * (pca.replicates - s.replicates) for s in saes], axis=0)  # (n_boot,)
    reps = reps[np.isfinite(reps)]
    var = float(reps.var(ddof=1)) if reps.size > 1 else 0.0
    how = (f"t over {len(saes)} SAE refits + paired bootstrap variance of their mean over the shared "
           f"held-out batches ({reps.size} resamples)")
    return from_refits(per_fit, 0.0, how, sampling_var=var,
                       extra={"pca": pca.value, "sae_per_fit": [s.value for s in saes], "sampling_var": var})


def round1_evidence(per_batch_diff: np.ndarray, counts: np.ndarray) -> Evidence:
    """The round-1 statistic: the mean of per-batch differences (one fit) with its batch bootstrap."""
    diff = np.asarray(per_batch_diff, dtype=float)  # (B,)
    return from_boots(float(diff.mean()), counts @ diff / counts.sum(1), 0.0,
                      "percentile bootstrap over evaluation batches, one SAE fit", n_units=int(diff.size))


def verdicts_for(key: str, ev: dict[str, Evidence], controls: dict[str, tuple[Evidence | None, Evidence | None]],
                 sae: str | None, k: int, scale: str, control_note: str) -> list[Verdict]:
    """The study's verdicts at budget k, each judged with its crux's controls."""
    out = []
    for crux, e in ev.items():
        what, stat = ASPECT[crux]
        pos, neg = controls.get(crux, (None, None))
        per_fit = ", ".join(f"{v:.4g}" for v in e.extra.get("per_fit", []))
        note = (f"{what}, k={k}: {stat} = {e.statistic:.4g}; {sae} against sign-split PCA; per fit [{per_fit}]. "
                f"> 0 favours the SAE. CI: {e.how}. The SAE is the within-budget one with the lowest FVU on "
                f"training rows. Controls: {control_note}.")
        out.append(judge(crux, e, subject=f"{key} @ k={k}", positive=pos, negative=neg, scale=scale, note=note))
    return out
