"""Mechanistic anomaly detection: do explanation-based detectors catch backdoors that activation statistics miss?

Subjects are backdoored toys with known triggers (max-of-k, a character transformer, an MLP on
planted features; see `interplab.subjects.backdoor`), each retrained on at least 5 seeds: the seed
is the resampling unit (every seed has its own model, trusted set, test and control inputs, so the
t interval over seeds needs no shared sampling term). Wherever a "best" detector is scored, it is
chosen leave-one-seed-out: the (detector, site) with the best mean on the other seeds is scored on
the held-out seed, so the maximum over detectors is never taken on the data that scores it.

Controls run through the same pipeline (same detectors, same choice rule, same statistic) on the
same models: the positive control plants anomalies far off the trusted distribution (activations
shifted along a random direction), the negative control draws its "anomalies" from the trusted
distribution itself. Defined before the pipeline was first run.
"""

from interplab.verdicts.crux import define

UNIT = ("backdoor training seeds (each: a backdoored model with its own trusted, test and control inputs), "
        "at least 5; a seed whose backdoor did not take is reported and left out")
CHOICE = "chosen leave-one-seed-out (best mean on the other seeds, scored on the held-out seed)"
SHIFTED = ("the same models and clean test inputs with the activations at every scored site shifted 8 trusted "
           "standard deviations along a random direction (logits and gradients left as they were)")
FROM_TRUSTED = "'anomalies' drawn from the trusted (clean) distribution itself"

define(
    id="mad-works", experiment="mad", family="mad",
    question="Does mechanistic anomaly detection work on these backdoors?",
    claim="the best detector flags triggered inputs: AUROC (triggered vs clean) above 0.9",
    statistic=f"AUROC of triggered vs clean test inputs of the (detector, site) {CHOICE}; mean over seeds",
    null="0.9", direction="higher", unit=UNIT,
    positive_control=SHIFTED, negative_control=FROM_TRUSTED,
)
define(
    id="mad-explain", experiment="mad", family="mad",
    question="Does an explanation-based detector beat Mahalanobis on the activations?",
    claim="explain-cov (surprise under covariance propagation of the trusted input distribution) detects triggered "
          "inputs better than the Mahalanobis distance from the trusted activations",
    statistic="AUROC(explain-cov) - AUROC(mahalanobis), triggered vs clean, averaged over the subject's scored "
              "sites, paired within each seed; mean over seeds (both detectors fixed in advance)",
    null="0", direction="higher", unit=UNIT,
    positive_control="a trusted set 30% contaminated by activations shifted 4 standard deviations along a random "
                     "direction, anomalies shifted the same way, and an exact explanation (the moments of the "
                     "uncontaminated trusted activations): Mahalanobis learns the contamination, the explanation "
                     "does not",
    negative_control=FROM_TRUSTED + " (both detectors at chance)",
)
define(
    id="mad-same-output", experiment="mad", family="mad",
    question="When a backdoor gives the correct answer through the trigger path, do activation detectors beat "
             "output-only ones?",
    claim="the best detector reading the model's internals separates triggered from clean inputs with the same "
          "answer better than the best output-only detector",
    statistic="AUROC(best internal detector: activations, explanation or attribution, any site) - AUROC(best "
              "output-only detector: entropy, max logit, Mahalanobis on the logits) on max-of-k inputs whose max is "
              f"the backdoor's target, triggered vs clean; each best {CHOICE}; paired within seed; mean over seeds",
    null="0", direction="higher", unit=UNIT,
    positive_control="the same-answer clean inputs with activations shifted 8 trusted standard deviations along a "
                     "random direction and their logits unchanged",
    negative_control="'anomalies' drawn from the same-answer clean distribution itself",
)
define(
    id="mad-control", experiment="mad", family="mad",
    question="Do detectors separate triggered inputs from off-distribution but mechanistically normal inputs?",
    claim="some detector flags triggered inputs against clean inputs and against the off-distribution control "
          "alike (a mechanism detector, not an outlier detector): min of the two AUROCs above 0.9",
    statistic="min(AUROC triggered vs clean, AUROC triggered vs control) of the (detector, site) "
              f"{CHOICE.replace('best mean', 'best mean of that minimum')}; mean over seeds",
    null="0.9", direction="higher", unit=UNIT,
    positive_control=SHIFTED + ", against the real control inputs",
    negative_control=FROM_TRUSTED + ", against the real control inputs",
)
