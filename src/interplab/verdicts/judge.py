"""From evidence to a verdict: the decision rule, the controls, the status, the Holm correction.

    v = judge("1a", evidence, subject="tms 10→5", positive=pos, negative=neg, scale="small")

The verdict word comes from the CI against the null (`decide`). Whether it counts as a finding is
its *status*, decided by the crux's definition and its controls, never by the result:
- "harness check": the crux is a property of the set-up (shown apart, never counted);
- "needs --scale default": run below the crux's smallest decidable scale (no verdict is printed);
- "uncalibrated": the positive control did not read "supported", or the negative control did,
  or controls were not run; the pipeline could not be trusted to come out the other way;
- "superseded": an older definition kept beside the primary one;
- "counted": everything above passed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from interplab.verdicts.crux import SCALES, Crux, get
from interplab.verdicts.evidence import Evidence

VerdictWord = Literal["supported", "not supported", "inconclusive"]
COUNTED, UNCALIBRATED, HARNESS, SUPERSEDED = "counted", "uncalibrated", "harness check", "superseded"
NEEDS_SCALE = "needs --scale default"
STATUSES = (COUNTED, UNCALIBRATED, HARNESS, NEEDS_SCALE, SUPERSEDED)
ALPHA = 0.05


def decide(statistic_ci: tuple[float, float], null: float, higher_is_support: bool = True) -> VerdictWord:
    """The verdict a CI earns against a null value.

    "supported" only when the whole CI lies on the supporting side of the null, "not supported"
    when it lies wholly on the other side; a CI that touches or straddles the null (or is NaN)
    is "inconclusive": the data cannot tell the claim from the null.
    """
    low, high = (float(v) for v in statistic_ci)
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > null:
        return "supported" if higher_is_support else "not supported"
    if high < null:
        return "not supported" if higher_is_support else "supported"
    return "inconclusive"


@dataclass
class Verdict:
    """One crux on one subject: statistic, 95% CI, null, verdict word, and whether it counts."""

    crux: str
    statistic: float
    ci: tuple[float, float]
    null: float
    verdict: str
    subject: str | None = None
    note: str = ""
    question: str = ""
    status: str = UNCALIBRATED
    raw_verdict: str = ""
    """The word the CI earned (`verdict` shows "needs --scale default" instead below the min scale)."""
    p: float = math.nan
    p_holm: float = math.nan
    verdict_holm: str = ""
    """The verdict after the family's Holm correction at 5% (from p_holm and the statistic's side)."""
    family: str = ""
    primary: bool = True
    controls: dict[str, Any] = field(default_factory=dict)
    """{"positive": {...}, "negative": {...}}: each control's statistic, CI, verdict, passed, what."""
    how: str = ""
    scale: str = ""

    @property
    def counted(self) -> bool:
        return self.status == COUNTED


def control_record(crux: Crux, ev: Evidence | None, role: str) -> dict[str, Any]:
    """A control's JSON record: what it is, what it measured, and whether it passed."""
    what = crux.positive_control if role == "positive" else crux.negative_control
    if ev is None:
        return {"what": what, "ran": False, "passed": False, "verdict": "not run"}
    word = decide(ev.ci, ev.null, crux.higher_is_support)
    passed = word == "supported" if role == "positive" else word != "supported"
    return {"what": what, "ran": True, "passed": passed, "verdict": word, "statistic": ev.statistic,
            "ci": list(ev.ci), "null": ev.null, "how": ev.how}


def judge(crux_id: str, evidence: Evidence, subject: str, positive: Evidence | None = None,
          negative: Evidence | None = None, scale: str = "default", note: str = "") -> Verdict:
    """The verdict of `crux_id` on one subject, with its controls and status."""
    crux = get(crux_id)
    word = decide(evidence.ci, evidence.null, crux.higher_is_support)
    controls = {"positive": control_record(crux, positive, "positive"),
                "negative": control_record(crux, negative, "negative")}
    below = scale in SCALES and SCALES.index(scale) < SCALES.index(crux.min_scale)
    if crux.kind == "harness":
        status = HARNESS
    elif below:
        status = NEEDS_SCALE
    elif not crux.primary:
        status = SUPERSEDED
    elif not (controls["positive"]["passed"] and controls["negative"]["passed"]):
        status = UNCALIBRATED
    else:
        status = COUNTED
    return Verdict(
        crux=crux.id, statistic=evidence.statistic, ci=evidence.ci, null=evidence.null,
        verdict=NEEDS_SCALE if status == NEEDS_SCALE else word, subject=subject, note=note,
        question=crux.question, status=status, raw_verdict=word, p=evidence.p, family=crux.family,
        primary=crux.primary, controls=controls, how=evidence.how, scale=scale,
    )


def holm(verdicts: Iterable[Verdict], alpha: float = ALPHA) -> None:
    """Holm's step-down correction within each family, in place: sets p_holm and verdict_holm.

    The family is every primary, non-harness verdict of that family with a finite p (counted or
    not: a test that was run is part of the family whatever its controls said).
    """
    by_family: dict[str, list[Verdict]] = {}
    for v in verdicts:
        if v.primary and v.status != HARNESS and math.isfinite(v.p):
            by_family.setdefault(v.family, []).append(v)
    for members in by_family.values():
        m = len(members)
        order = np.argsort([v.p for v in members], kind="stable")
        running = 0.0
        for rank, i in enumerate(order):
            v = members[i]
            running = max(running, min(1.0, (m - rank) * v.p))
            v.p_holm = running
            v.verdict_holm = _word_from_p(v, running, alpha)


def _word_from_p(v: Verdict, p: float, alpha: float) -> str:
    if not p < alpha:
        return "inconclusive"
    crux = get(v.crux)
    above = v.statistic > v.null
    return "supported" if above == crux.higher_is_support else "not supported"


def summary_counts(verdicts: Iterable[dict[str, Any] | Verdict]) -> dict[str, int]:
    """Counts of counted verdicts by word, and of the others by status."""
    out = {"supported": 0, "not supported": 0, "inconclusive": 0, UNCALIBRATED: 0, HARNESS: 0,
           NEEDS_SCALE: 0, SUPERSEDED: 0}
    for v in verdicts:
        d = v if isinstance(v, dict) else v.__dict__
        status = d.get("status") or UNCALIBRATED
        key = d.get("verdict", "inconclusive") if status == COUNTED else status
        out[key] = out.get(key, 0) + 1
    return out
