"""Every metric the toolkit reports, computed in one place with scikit-learn / SciPy.

Entry points (train, eval, detect, reports) call these functions and nothing else computes a
metric. ``proba`` is always (N, n_classes) class probabilities; binary tasks use class 1
(in-hospital death) as the positive class.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """AUROC (one-vs-rest macro for more than two classes); NaN when only one class is present."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    if np.unique(y_true).size < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y_true, proba[:, 1]))
    return float(
        roc_auc_score(
            y_true, proba, multi_class="ovr", average="macro", labels=np.arange(proba.shape[1])
        )
    )
