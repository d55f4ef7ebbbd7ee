"""Forest plots of the `hypotheses` verdicts: one figure per hypothesis, one row per (crux, subject).

Toy and LM statistics of one hypothesis are on different scales (2b: features per neuron against an
FVU gap), so each group gets its own panel and x axis. A filled dot is a counted verdict (both
controls passed); an open one is uncalibrated, superseded or a harness check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from interplab.verdicts import COUNTED, Verdict

COLOURS = {"supported": "C2", "not supported": "C3"}
GROUPS = {  # figure -> (title, cruxes drawn)
    "1a": ("1a neurons polysemantic (median PR over neurons; null 1.5)", ("1a", "1a-signblind")),
    "1b": ("1b features span several neurons (median PR over features; null 1.5)", ("1b",)),
    "basis": ("is the neuron basis privileged? (rotated minus real median log PR; null 0)", ("basis",)),
    "2a": ("2a sparse structure: [FVU(PCA) - FVU(SAE)] real minus Gaussian twin (null 0)", ("2a-sparse", "2a")),
    "2b": ("2b more features than dimensions (tms: features per neuron, null 1; LM: width gain real "
           "minus null, null 0)", ("2b", "2b-width")),
}


def forest_figure(name: str, groups: Sequence[tuple[str, Sequence[Verdict]]]) -> Figure | None:
    """Per group (panel label, verdicts): statistic with its 95% CI (bar, coloured by verdict) and the
    null (open diamond), one row per (crux, subject); None when nothing of `name` was measured."""
    title, cruxes = GROUPS[name]
    panels = [(label, [v for v in vs if v.crux in cruxes and math.isfinite(v.statistic)]) for label, vs in groups]
    panels = [(label, rows) for label, rows in panels if rows]
    if not panels:
        return None
    heights = [len(rows) + 1.2 for _, rows in panels]
    fig = Figure(figsize=(7.5, 0.5 * sum(heights) + 0.8), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (label, rows) in zip(axes, panels):
        for y, v in enumerate(rows):
            colour = COLOURS.get(v.verdict, "0.45")
            filled = v.status == COUNTED
            ax.plot(list(v.ci), [y, y], color=colour, lw=2.5, solid_capstyle="butt")
            ax.plot(v.statistic, y, "o", color=colour, mfc=colour if filled else "white", ms=7,
                    label=f"{v.verdict}{'' if filled else f' ({v.status})'}")
            ax.plot(v.null, y, "D", mfc="white", mec="k", ms=6, label="null")
        ax.set_yticks(np.arange(len(rows)), [f"{v.crux}: {v.subject}" for v in rows], fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel(label, fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=6, loc="best")
        ax.grid(axis="x", lw=0.3)
    fig.suptitle(title, fontsize=9)
    return fig
