"""Positive and negative controls of the LPE cruxes: planted groups through the very same pipeline.

Each crux's controls are planted families (interplab.lpe.planted) with exact truth, run by
`lpe_pipeline.pipeline` with the real run's budgets, samplers' settings, floor, calibration,
statistic and number of groups (so the cluster bootstrap has as many units as the real verdict):

| crux            | positive (claim true by construction) | negative (claim false by construction) |
|-----------------|---------------------------------------|----------------------------------------|
| lpe-is-vs-ae    | key: a spike below the floor           | phase: gradient-blind common targets   |
| lpe-is-vs-naive | key                                    | phase                                  |
| lpe-ae-vs-naive | cone: a Gaussian activation, QLD exact | phase                                  |

`key`: the target fires only when every position holds its key token (p ~ 1e-8..1e-5); its logit's
gradient points at the key tokens, while sampled activations never reach the key count. `cone`: a
narrow cone of a nearly exactly Gaussian activation, p ~ 1e-7..1e-5, where QLD's independence holds.
`phase`: common targets (p ~ 2e-3..0.2) decided by a sum of token residues mod 64 on a circle:
the target logit's gradient is zero on average and the activations lie on a circle, so neither
importance sampling nor extrapolation has information naive sampling lacks.
Results are cached per (family, crux, settings, code) with `cached_evidence`.
"""

from __future__ import annotations

from typing import Any

from interplab import ui
from interplab.experiments.lpe_pipeline import CRUX_PAIRS, Group, crux_evidence, pipeline, representatives
from interplab.lpe import Problem, event_probs
from interplab.lpe.planted import planted_groups
from interplab.verdicts import Evidence, cached_evidence

CONTROLS = {"lpe-is-vs-ae": ("key", "phase"), "lpe-is-vs-naive": ("key", "phase"), "lpe-ae-vs-naive": ("cone", "phase")}
CONTROLS |= {f"{crux}-log": roles for crux, roles in CONTROLS.items()}
"""crux -> (positive family, negative family)."""
SETTINGS = ("budgets", "floor", "itgis_temperature", "itgis_score", "itgis_decay", "mhis_temperature",
            "mhis_chains", "is_representative", "extrapolation_representative", "seed")
"""The config fields a control's result depends on (its cache key, with the code hash)."""


def control_groups(family: str, n: int, seed: int, p_max: float) -> list[Group]:
    """n planted groups of `family` with their exact truths (enumeration of small supports); rare
    targets lie in [p_max / 1000, p_max]."""
    out = []
    for g in planted_groups(family, n, seed, p_max):
        probs = event_probs(g.model, g.dists)  # (V,) exact
        out.append(Group(family, g.name, Problem(g.model, g.dists, g.targets[0], g.name), list(g.targets),
                         {t: float(probs[t]) for t in g.targets}))
    return out


def control_evidence(cfg: Any, n_groups: int) -> dict[str, dict[str, Evidence]]:
    """{crux: {"positive": Evidence, "negative": Evidence}} for every LPE crux, cached."""
    settings = {k: getattr(cfg, k) for k in SETTINGS} | {"n_groups": n_groups}
    methods = set(representatives(cfg).values())
    done: dict[str, dict[str, Evidence]] = {}

    def family_evidence(family: str) -> dict[str, Evidence]:
        if family not in done:
            ui.info(f"lpe control: {n_groups} planted '{family}' groups")
            groups = control_groups(family, n_groups, cfg.seed, 0.99 / max(cfg.budgets))
            scored, _ = pipeline(groups, cfg, methods)
            done[family] = crux_evidence(scored, cfg)
        return done[family]

    out: dict[str, dict[str, Evidence]] = {}
    for crux, roles in CONTROLS.items():
        if crux not in CRUX_PAIRS:
            continue
        out[crux] = {}
        for role, family in zip(("positive", "negative"), roles):
            out[crux][role] = cached_evidence(f"lpe/{crux}/{role}/{family}", settings,
                                              lambda family=family, crux=crux: family_evidence(family)[crux])
    return out

