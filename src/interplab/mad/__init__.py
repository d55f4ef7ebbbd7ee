"""Mechanistic anomaly detection: detectors behind one fit/score interface, and how they are scored.

    from interplab import mad
    det = mad.create("mahalanobis", site="hidden.1").fit(trusted)    # trusted: mad.Views
    scores = det.score(test)                                         # (n,), higher = more anomalous
    mad.auroc(scores_normal, scores_anomalous)

Registered detectors (DETECTORS): mahalanobis, pca-residual, sae-recon, sae-novelty,
isolation-forest, entropy, max-logit, explain-cov, explain-mean, attribution.
"""

from interplab.mad import attribution, explain, iforest, mahalanobis, output, pca, sae  # noqa: F401  (registration)
from interplab.mad.base import DETECTORS, OUTPUT_SITE, Detector, DetectorSettings, Views, canonical_order, create
from interplab.mad.scoring import auroc, fpr_at_recall, roc_points

__all__ = [
    "DETECTORS", "OUTPUT_SITE", "Detector", "DetectorSettings", "Views", "auroc", "canonical_order",
    "create", "fpr_at_recall", "roc_points",
]
