"""The four superposition hypotheses and the privileged-basis question, each a crux with controls.

1a neurons are polysemantic, 1b features span several neurons, `basis` the neuron basis is
privileged (neurons carry fewer features than random directions), 2a-sparse features are sparse (a
sparse code finds structure PCA misses beyond the Gaussian twin, and does not on dense features;
2a, the same with a Gaussian negative control, is kept beside it), 2b there are more features than
dimensions (trained toy weights; 2b-width on the LM). The definitions live in `interplab.verdicts.catalog.hypotheses`; every verdict goes
through `interplab.verdicts.judge` with a planted positive and negative control that ran through
the same pipeline function as the subject (`hypotheses_controls`).

Subjects and units:
- `tms` neuron models (10 features, 5 ReLU neurons, importance 0.75^i) at each density in
  `tms_densities`, `tms_seeds` trained instances each: the weight cruxes from W
  (`hypotheses_weights`), 2a-sparse/2a on the hidden layer's activations (`hypotheses_gap`), the
  input density as a harness check (`hypotheses_toy`). Unit: the trained instance.
- `synthetic` planted dictionary: n/d and its planted firing are harness checks (never counted);
  its activations are what the gap cruxes' controls are made of.
- `smollm2` at `lm_layer`: SAE latents are the PROXY for features; 1a/1b/basis over SAE refits,
  2a-sparse/2a/2b-width as (real gap - null gap) over real/null refit pairs plus the held-out
  sampling variance (`hypotheses_lm`). Unit: the SAE refit. 2b-width needs `--scale default`.

The summary counts only "counted" verdicts (both controls passed); harness checks, superseded
definitions (1a-signblind, 1a-frac, 1b-frac, 2a, kept beside their replacements) and uncalibrated
verdicts are listed apart.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from interplab.experiments.base import Experiment, Result, register
from interplab.experiments.hypotheses_config import TMS_SETUP, HypothesesConfig
from interplab.experiments.hypotheses_controls import Judged
from interplab.experiments.hypotheses_figures import GROUPS, forest_figure
from interplab.verdicts import HARNESS, NEEDS_SCALE, SUPERSEDED, UNCALIBRATED, Verdict, summary_counts

__all__ = ["TMS_SETUP", "Hypotheses", "HypothesesConfig"]


def _ci_text(v: Verdict) -> str:
    lo, hi = v.ci
    return "—" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.3g}, {hi:.3g}]"


def verdict_table(verdicts: list[Verdict]) -> dict[str, list]:
    """One row per verdict, with its controls' verdicts and whether it is counted."""
    rows = []
    for v in verdicts:
        pos, neg = v.controls.get("positive", {}), v.controls.get("negative", {})
        rows.append([v.crux, v.subject, v.statistic, _ci_text(v), v.null, v.verdict, v.status,
                     pos.get("verdict", "—"), neg.get("verdict", "—")])
    return {"columns": ["crux", "subject", "statistic", "95% CI", "null", "verdict", "status",
                        "positive control", "negative control"], "rows": rows}


def metrics_of(verdicts: list[Verdict], extras: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in verdicts:
        out.setdefault(v.subject or "", {})[v.crux] = {
            "statistic": v.statistic, "ci": list(v.ci), "null": v.null, "verdict": v.verdict, "status": v.status,
            "how": v.how, "controls": v.controls, **extras.get((v.crux, v.subject or ""), {})}
    return out


def summary_of(verdicts: list[Verdict], caveat: str) -> str:
    c = summary_counts(verdicts)
    counted = c["supported"] + c["not supported"] + c["inconclusive"]
    return (f"{counted} counted verdicts (both controls passed): {c['supported']} supported, {c['not supported']} "
            f"not supported, {c['inconclusive']} inconclusive. Not counted: {c[UNCALIBRATED]} uncalibrated, "
            f"{c[NEEDS_SCALE]} needing --scale default, {c[SUPERSEDED]} superseded definitions shown beside their "
            f"replacements, {c[HARNESS]} harness checks (properties of the set-up)." + caveat)


@register
class Hypotheses(Experiment):
    """1a, 1b, basis, 2a, 2b on toys and an LM (SAE latents as proxy), each with planted controls."""

    name = "hypotheses"
    order = 3
    title = "Polysemanticity, sparsity and superposition (1a, 1b, 2a, 2b) against a null, with controls"
    Config = HypothesesConfig
    small: ClassVar[dict[str, Any]] = {
        "tms_seeds": 4, "tms_samples": 4000, "toy_sae_steps": 100, "toy_sae_batch_size": 512,
        "synthetic_samples": 8000, "n_rotations": 10, "n_boot": 500,
        "lm_sites": ["resid_post"], "lm_tokens": 4096, "sae_widths": [1], "sae_refits": 3, "sae_steps": 100,
        "sae_batch_size": 256}

    def run(self, cfg: HypothesesConfig) -> Result:
        from interplab.experiments.hypotheses_toy import synthetic_verdicts, tms_verdicts

        toy_j = tms_verdicts(cfg, self.scale) + synthetic_verdicts(cfg, self.scale)
        lm_j: list[Judged] = []
        caveat = ""
        if cfg.lm:
            from interplab.experiments.hypotheses_lm import CAVEAT, lm_verdicts

            lm_j = lm_verdicts(cfg, self.scale)
            caveat = " " + CAVEAT
        toy, lm = [j.verdict for j in toy_j], [j.verdict for j in lm_j]
        verdicts = toy + lm
        figures, captions = {}, {}
        for name in GROUPS:
            fig = forest_figure(name, [("toys (ground truth weights and activations)", toy),
                                       ("LM (SAE latents as proxy)", lm)])
            if fig is not None:
                figures[f"forest_{name}"] = fig
                captions[f"forest_{name}"] = ("Statistic (dot; filled when counted) and 95% CI (bar), coloured by "
                                              "verdict; open diamond: the null.")
        captions["verdicts"] = "One row per (crux, subject); status 'counted' needs both controls to pass." + caveat
        extras = {(j.verdict.crux, j.verdict.subject or ""): j.extra for j in toy_j + lm_j}
        return Result(experiment=self.name, title=self.title, config=cfg.model_dump(mode="json"), seed=cfg.seed,
                      metrics=metrics_of(verdicts, extras), verdicts=verdicts,
                      tables={"verdicts": verdict_table(verdicts)}, figures=figures, captions=captions,
                      summary=summary_of(verdicts, caveat))

