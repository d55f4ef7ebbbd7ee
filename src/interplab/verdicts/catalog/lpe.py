"""Low-probability estimation (Wu & Hilton 2024): the published ordering, below the sampling floor.

Targets are outputs whose exact probability p satisfies p x budget < 1 at every scored budget.
Families are represented by methods fixed in advance (ITGIS for importance sampling, QLD for
activation extrapolation); temperatures are tuned on a model and distribution that is never scored.
"""

from interplab.verdicts.crux import define

STAT = ("mean over targets of the fitted Itakura-Saito loss of the loser minus that of the claimed winner, at "
        "the largest budget (calibration affine in log space, fitted on held-out (model, distribution) groups)")
UNIT = "(model, distribution) groups, at least 6 (cluster bootstrap: targets of a group share one sample)"
BELOW = "a planted model whose target fires only on one token per position (p ~ 1e-6, exact), below the floor"
COMMON = "a common target (p ~ 0.3) on the same model, where naive sampling is already accurate"

define(
    id="lpe-is-vs-ae", experiment="lpe", family="lpe",
    question="Below the sampling floor, does importance sampling beat activation extrapolation?",
    claim="importance sampling (ITGIS) estimates rare outputs better than activation extrapolation (QLD)",
    statistic=STAT, null="0", direction="higher", unit=UNIT,
    positive_control=BELOW + ", where extrapolating a Gaussian fit to the activations misses the planted spike",
    negative_control="targets whose logit margin is an exactly Gaussian function of the activations, where "
                     "QLD is exact and importance sampling cannot beat it",
)
define(
    id="lpe-is-vs-naive", experiment="lpe", family="lpe",
    question="Below the sampling floor, does importance sampling beat naive sampling?",
    claim="importance sampling (ITGIS) estimates rare outputs better than naive sampling at equal budget",
    statistic=STAT, null="0", direction="higher", unit=UNIT,
    positive_control=BELOW, negative_control=COMMON,
)
define(
    id="lpe-ae-vs-naive", experiment="lpe", family="lpe",
    question="Below the sampling floor, does activation extrapolation beat naive sampling?",
    claim="activation extrapolation (QLD) estimates rare outputs better than naive sampling at equal budget",
    statistic=STAT, null="0", direction="higher", unit=UNIT,
    positive_control="rare targets whose logit margin is an exactly Gaussian function of the activations",
    negative_control=COMMON,
)
