"""Spectral signatures (Tran, Li and Madry, NeurIPS 2018).

Per class, centre the penultimate features and take the top right singular vector of the
centred matrix (the top principal axis); a stay's score is its squared projection onto it.
Poison that shares a trigger pulls the class's top direction towards itself, so poisoned stays
project far along it. The SVD of a tall (n, D) matrix is the eigendecomposition of its D x D
covariance: scikit-learn's PCA with ``svd_solver="covariance_eigh"`` does exactly that, one
pass over the rows, which is what makes a million stays take a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

from backdoor_study.detectors.base import Detector, per_class


def principal_projections(rows: np.ndarray, n_components: int) -> np.ndarray:
    """(n, k) coordinates of centred ``rows`` (n, D) on their top k = min(n_components, D, n - 1)
    principal axes; (n, 0) when there are fewer than two rows."""
    k = min(n_components, rows.shape[1], rows.shape[0] - 1)
    if k < 1:
        return np.zeros((rows.shape[0], 0))
    return PCA(n_components=k, svd_solver="covariance_eigh").fit_transform(rows)


@dataclass
class SpectralSignature(Detector):
    """Score = squared projection of the class-centred features on the class's top singular
    vector. ``score(features (N, D), labels (N,)) -> (N,)``; flags with the per-class budget."""

    name = "spectral"

    def score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return per_class(features, labels, _squared_top_projection)


def _squared_top_projection(rows: np.ndarray) -> np.ndarray:
    projection = principal_projections(rows, 1)
    return (projection**2).sum(axis=1)
