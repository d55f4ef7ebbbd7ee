"""The verdict machinery: crux definitions, evidence with CIs, controls, status and Holm correction.

    from interplab.verdicts import judge, holm, from_refits

    ev = from_refits(per_seed_gaps, null=0.0, how="t over 3 SAE refits")
    v = judge("2a", ev, subject="smollm2 resid_post.6", positive=pos_ev, negative=neg_ev, scale="small")

Every experiment computes its verdicts through `judge`, on the real subject and on the crux's planted
positive and negative controls, with the same function; the definitions live in `catalog/`.
"""

from interplab.verdicts.controls import cached_evidence
from interplab.verdicts.crux import CRUXES, SCALES, Crux, define, get
from interplab.verdicts.evidence import Evidence, boot_p, bootstrap_units, exact, from_boots, from_refits
from interplab.verdicts.judge import (
    COUNTED,
    HARNESS,
    NEEDS_SCALE,
    STATUSES,
    SUPERSEDED,
    UNCALIBRATED,
    Verdict,
    VerdictWord,
    decide,
    holm,
    judge,
    summary_counts,
)

__all__ = [
    "COUNTED", "CRUXES", "Crux", "Evidence", "HARNESS", "NEEDS_SCALE", "SCALES", "STATUSES", "SUPERSEDED",
    "UNCALIBRATED", "Verdict", "VerdictWord", "boot_p", "bootstrap_units", "cached_evidence", "decide", "define", "exact",
    "from_boots", "from_refits", "get", "holm", "judge", "summary_counts",
]
