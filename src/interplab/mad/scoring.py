"""How detectors are scored: AUROC, false-positive rate at a recall, ROC curve points.

AUROC is the Mann-Whitney probability that an anomalous input scores above a normal one, ties
counted one half (the same number as `sklearn.metrics.roc_auc_score` with anomalies labelled 1).
The FPR at 95% recall is the share of normal inputs scoring at or above the threshold that flags
95% of the anomalies (the largest threshold whose recall is at least 95%, as `roc_curve` reads).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """P(score(anomalous) > score(normal)) + ½ P(tie); NaN if either set is empty."""
    a, b = np.asarray(normal, dtype=np.float64), np.asarray(anomalous, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan
    ranks = rankdata(np.concatenate([a, b]))  # midranks for ties
    u = ranks[a.size:].sum() - b.size * (b.size + 1) / 2
    return float(u / (a.size * b.size))


def fpr_at_recall(normal: np.ndarray, anomalous: np.ndarray, recall: float = 0.95) -> float:
    """Share of normal scores >= the largest threshold that flags at least `recall` of the anomalies."""
    a, b = np.asarray(normal, dtype=np.float64), np.sort(np.asarray(anomalous, dtype=np.float64))[::-1]
    if a.size == 0 or b.size == 0:
        return math.nan
    threshold = b[max(0, math.ceil(recall * b.size) - 1)]
    return float((a >= threshold).mean())


def roc_points(normal: np.ndarray, anomalous: np.ndarray, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at `n_points` thresholds spanning the scores, for plotting."""
    a, b = np.asarray(normal, dtype=np.float64), np.asarray(anomalous, dtype=np.float64)
    cuts = np.unique(np.quantile(np.concatenate([a, b]), np.linspace(0, 1, n_points)))[::-1]
    fpr = np.array([0.0] + [(a >= c).mean() for c in cuts] + [1.0])
    tpr = np.array([0.0] + [(b >= c).mean() for c in cuts] + [1.0])
    return fpr, tpr
