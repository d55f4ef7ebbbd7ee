"""Low-probability estimation (Wu & Hilton 2024): the published ordering, below the sampling floor.

Targets are outputs whose exact probability p satisfies p x budget < 1 at every scored budget.
Families are represented by methods fixed in advance (ITGIS for importance sampling, QLD for
activation extrapolation); the samplers' temperatures are chosen on distributions that are never
scored. Every crux's controls are planted groups (interplab.lpe.planted) with exact truth, run by the
same pipeline with as many groups as the real verdict (at least 6), so the cluster bootstrap has as
many units: the small scale (one model, six distributions) is decidable.

The first three definitions (mean fitted IS loss difference) are kept, computed and shown beside the
`-log` definitions that superseded them after the first default-scale run (see WHY_LOG).
"""

from interplab.verdicts.crux import define

STAT = ("mean over targets of the fitted Itakura-Saito loss of the loser minus that of the claimed winner, at "
        "the largest budget (calibration affine in log10 space per method and budget, fitted leave-one-group-out)")
UNIT = "(model, distribution) groups, at least 6 (cluster bootstrap: the targets of a group share its samples)"
KEY = ("planted 'key' groups: each target fires only when every position holds its key token (p ~ 1e-8..1e-5, "
       "exact), so its logit's gradient points at the event while sampled activations never reach it")
CONE = ("planted 'cone' groups: a nearly exactly Gaussian activation (lattice-Gaussian tokens, one coordinate per "
        "position) and targets winning in a narrow cone (p ~ 1e-7..1e-5), where QLD's independence holds")
PHASE = ("planted 'phase' groups: common targets (p ~ 2e-3..0.2) decided by a sum of token residues mod 64 mapped "
         "onto a circle: the target logit's gradient is zero on average and the activations lie on a circle, so "
         "neither family has information that naive sampling, already accurate there, lacks")

define(
    id="lpe-is-vs-ae", experiment="lpe", family="lpe", primary=False,
    question="Below the sampling floor, does importance sampling beat activation extrapolation?",
    claim="importance sampling (ITGIS) estimates rare outputs better than activation extrapolation (QLD)",
    statistic=STAT, null="0", direction="higher", unit=UNIT, positive_control=KEY, negative_control=PHASE,
)
define(
    id="lpe-is-vs-naive", experiment="lpe", family="lpe", primary=False,
    question="Below the sampling floor, does importance sampling beat naive sampling?",
    claim="importance sampling (ITGIS) estimates rare outputs better than naive sampling at equal budget",
    statistic=STAT, null="0", direction="higher", unit=UNIT, positive_control=KEY, negative_control=PHASE,
)
define(
    id="lpe-ae-vs-naive", experiment="lpe", family="lpe", primary=False,
    question="Below the sampling floor, does activation extrapolation beat naive sampling?",
    claim="activation extrapolation (QLD) estimates rare outputs better than naive sampling at equal budget",
    statistic=STAT, null="0", direction="higher", unit=UNIT, positive_control=CONE, negative_control=PHASE,
)

STAT_LOG = ("mean over targets of log(1 + fitted Itakura-Saito loss) of the loser minus that of the claimed winner, "
            "at the largest budget (calibration as in the superseded definition)")
WHY_LOG = ("the mean of the fitted IS loss lets one target decide a group: at the default scale the positive control "
           "of lpe-ae-vs-naive (planted cone, where QLD's fitted loss is below the naive constant's on 17 of 18 "
           "groups) read inconclusive [-0.11, 0.71] because one QLD estimate 17x below the truth cost a loss of 8 "
           "against the naive constant's ~1. log(1 + loss) keeps each target's ordering and the loss's asymmetry (an "
           "underestimate by r costs about ln r, an overestimate about ln ln r) but bounds one target's weight. "
           "Applied to all three cruxes alike, so the family shares one statistic.")

define(
    id="lpe-is-vs-ae-log", experiment="lpe", family="lpe", supersedes="lpe-is-vs-ae", why=WHY_LOG,
    question="Below the sampling floor, does importance sampling beat activation extrapolation?",
    claim="importance sampling (ITGIS) estimates rare outputs better than activation extrapolation (QLD)",
    statistic=STAT_LOG, null="0", direction="higher", unit=UNIT, positive_control=KEY, negative_control=PHASE,
)
define(
    id="lpe-is-vs-naive-log", experiment="lpe", family="lpe", supersedes="lpe-is-vs-naive", why=WHY_LOG,
    question="Below the sampling floor, does importance sampling beat naive sampling?",
    claim="importance sampling (ITGIS) estimates rare outputs better than naive sampling at equal budget",
    statistic=STAT_LOG, null="0", direction="higher", unit=UNIT, positive_control=KEY, negative_control=PHASE,
)
define(
    id="lpe-ae-vs-naive-log", experiment="lpe", family="lpe", supersedes="lpe-ae-vs-naive", why=WHY_LOG,
    question="Below the sampling floor, does activation extrapolation beat naive sampling?",
    claim="activation extrapolation (QLD) estimates rare outputs better than naive sampling at equal budget",
    statistic=STAT_LOG, null="0", direction="higher", unit=UNIT, positive_control=CONE, negative_control=PHASE,
)
