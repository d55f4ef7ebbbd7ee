"""The yardstick: every decomposition scored by the same numbers on the same held-out data.

    from interplab.metrics import evaluate
    scores = evaluate(decomposer, subject, "resid_post.6")     # every metric defined for subject
    scores["fvu"], scores["ci"]["fvu"], scores["details"]["bits_raw"]

Modules, each usable on its own:
- `reconstruction`: FVU (float64, pooled over batches), L0, dead and dense fractions;
- `downstream`: loss recovered by splicing x_hat in (CE score vs zero and mean ablation, delta CE,
  KL score), BOS position left untouched;
- `description_length`: bits per token (firing pattern + values + residual) and dictionary bits;
- `groundtruth`: MMCS, Hungarian-matched MCC, firing precision/recall/F1, random floor;
- `interpretability`: automatic token labels, monosemanticity, sparse probing;
- `bootstrap`: per-batch sufficient statistics and percentile CIs over evaluation batches;
- `loss_curve`: loss recovered as a function of the number of features read (top-n by attribution),
  single-feature shares, n for 50% / 90% (`splice_batch` batches the splices of one site);
- `compute`: a ladder's fitted L(C) = a C^-b + c and the compute-equivalent of a loss.

Metrics sit left of experiments: nothing here imports `interplab.experiments`.
"""

from interplab.metrics.bootstrap import BatchStats, Estimate
from interplab.metrics.compute import ComputeEquivalent, Ladder, LadderPoint, compute_equivalent, fit_ladder
from interplab.metrics.description_length import (
    DescriptionLength,
    description_length,
    dictionary_bits,
)
from interplab.metrics.downstream import (
    LossRecovered,
    first_position,
    loss_recovered,
    mean_activation,
)
from interplab.metrics.evaluate import EvalSettings, evaluate, evaluate_many, headline_keys, is_planted
from interplab.metrics.groundtruth import (
    GroundTruth,
    ground_truth_scores,
    mmcs,
    random_floor,
)
from interplab.metrics.feature_basis import Basis, TrueFeatures, as_basis
from interplab.metrics.loss_curve import LossCurve, loss_curve, loss_curves
from interplab.metrics.interpretability import (
    Labels,
    monosemanticity,
    sparse_probing,
    token_labels,
)
from interplab.metrics.reconstruction import (
    Reconstruction,
    dead_fraction,
    dense_fraction,
    fvu,
    fvu_per_token_ratio,
    fvu_squared_moment_bug,
    l0,
)

__all__ = [
    "Basis",
    "BatchStats",
    "ComputeEquivalent",
    "Ladder",
    "LadderPoint",
    "LossCurve",
    "TrueFeatures",
    "as_basis",
    "compute_equivalent",
    "fit_ladder",
    "loss_curve",
    "loss_curves",
    "DescriptionLength",
    "Estimate",
    "EvalSettings",
    "GroundTruth",
    "Labels",
    "LossRecovered",
    "Reconstruction",
    "dead_fraction",
    "dense_fraction",
    "description_length",
    "dictionary_bits",
    "evaluate",
    "evaluate_many",
    "first_position",
    "fvu",
    "fvu_per_token_ratio",
    "fvu_squared_moment_bug",
    "ground_truth_scores",
    "headline_keys",
    "is_planted",
    "l0",
    "loss_recovered",
    "mean_activation",
    "mmcs",
    "monosemanticity",
    "random_floor",
    "sparse_probing",
    "token_labels",
]
