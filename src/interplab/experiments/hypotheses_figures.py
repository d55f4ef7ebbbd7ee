"""Forest plots of the `hypotheses` verdicts: one figure per hypothesis, one row per subject.

Toy and LM statistics of the same hypothesis are on different scales (2a: a firing probability
against an FVU gap), so each group gets its own panel and x axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from interplab.experiments.base import Verdict

COLOURS = {"supported": "C2", "not supported": "C3", "inconclusive": "0.45"}
TITLES = {
    "1a": "1a neurons polysemantic",
    "1b": "1b features span several neurons",
    "2a": "2a features sparse",
    "2b": "2b more features than dimensions",
}


def forest_figure(crux: str, groups: Sequence[tuple[str, Sequence[Verdict]]]) -> Figure:
    """Per group (x label, verdicts): statistic with its 95% CI (bar, coloured by verdict) and the
    null value (open diamond), one row per subject."""
    groups = [(label, [v for v in vs if v.crux == crux]) for label, vs in groups]
    groups = [(label, rows) for label, rows in groups if rows]
    heights = [len(rows) + 1.2 for _, rows in groups]
    fig = Figure(figsize=(7.5, 0.5 * sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (label, rows) in zip(axes, groups):
        for y, v in enumerate(rows):
            colour = COLOURS[v.verdict]
            ax.plot(list(v.ci), [y, y], color=colour, lw=2.5, solid_capstyle="butt")
            ax.plot(v.statistic, y, "o", color=colour, ms=7, label=v.verdict)
            ax.plot(v.null, y, "D", mfc="white", mec="k", ms=7, label="null")
        ax.set_yticks(np.arange(len(rows)), [v.subject or "" for v in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel(label, fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
        ax.grid(axis="x", lw=0.3)
    fig.suptitle(TITLES.get(crux, crux), fontsize=10)
    return fig
