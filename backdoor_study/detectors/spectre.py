"""SPECTRE: robust spectral poison detection (Hayase, Kong, Somani and Oh, ICML 2021).

Per class: project the centred penultimate features on their top ``n_components`` principal
axes; estimate the clean mean and covariance robustly (scikit-learn's MinCovDet, so the poison
cannot inflate the estimate it is measured against); whiten with that estimate, so clean stays
look isotropic and the poison's direction stands out as excess variance; then score with QUE
(quantum entropy scoring): with Sigma the second-moment matrix of the whitened rows,
U = exp(alpha (Sigma - I) / (||Sigma||_2 - 1)) and score_i = w_i^T U w_i / tr(U). Large alpha
weights the top excess-variance direction alone (spectral signatures after whitening); alpha = 0
gives the squared whitened norm (a Mahalanobis distance).

Simplifications against the paper: the number of principal axes is fixed (``n_components``)
rather than searched, and the robust estimate is MinCovDet rather than their filter. On this
project's synthetic rare_value 5% runs it reaches detection AUROC 0.99 on MLP penultimate
features and 0.87 on LSTM ones (plain spectral: 0.74 / 0.83).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.covariance import MinCovDet

from backdoor_study.detectors.base import Detector, per_class, require
from backdoor_study.detectors.spectral import principal_projections


@dataclass
class Spectre(Detector):
    """Robust-whitened QUE scores. ``score(features (N, D), labels (N,)) -> (N,)``.

    ``n_components`` >= 1 principal axes kept per class; ``alpha`` >= 0 the QUE temperature;
    ``support_fraction`` MinCovDet's share of rows in the robust core (a fraction in (0, 1), or
    None for its default (n + k + 1) / 2n; 0.8 assumes at most 20% of a class is poison and
    measured better than the default: AUROC 0.991 vs 0.982 on MLP, 0.873 vs 0.829 on LSTM,
    rare_value 5%); ``max_fit_rows`` >= 2: the robust estimate is fitted on at most this many rows
    of a class, drawn with ``random_state`` (MinCovDet's cost grows with n; a 16 x 16 covariance
    does not need a million rows), and every row is scored.
    """

    n_components: int = 16
    alpha: float = 4.0
    support_fraction: float | None = 0.8
    max_fit_rows: int = 5_000
    random_state: int = 0

    name = "spectre"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            isinstance(self.n_components, int) and self.n_components >= 1,
            "n_components",
            self.n_components,
            "an integer >= 1",
        )
        require(
            isinstance(self.alpha, (int, float)) and self.alpha >= 0,
            "alpha",
            self.alpha,
            "a number >= 0",
        )
        f = self.support_fraction
        require(
            f is None or (isinstance(f, float) and 0.0 < f < 1.0),
            "support_fraction",
            f,
            "null or a fraction in (0, 1)",
        )
        require(
            isinstance(self.max_fit_rows, int) and self.max_fit_rows >= 2,
            "max_fit_rows",
            self.max_fit_rows,
            "an integer >= 2",
        )

    def score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return per_class(features, labels, self._class_scores)

    def _class_scores(self, rows: np.ndarray) -> np.ndarray:
        z = principal_projections(rows, self.n_components)
        n, k = z.shape
        if k == 0 or n <= k + 1:
            return np.zeros(n)
        fit_rows = z
        if n > self.max_fit_rows:
            rng = np.random.default_rng(self.random_state)
            fit_rows = z[rng.choice(n, self.max_fit_rows, replace=False)]
        robust = MinCovDet(
            support_fraction=self.support_fraction, random_state=self.random_state
        ).fit(fit_rows)
        white = (z - robust.location_) @ _inverse_sqrt(robust.covariance_)
        return que_scores(white, self.alpha)


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    """cov^(-1/2) of a symmetric positive semi-definite matrix (tiny eigenvalues floored)."""
    evals, evecs = np.linalg.eigh(cov)
    floor = max(float(evals.max()), 1.0) * 1e-10
    return (evecs / np.sqrt(np.maximum(evals, floor))) @ evecs.T


def que_scores(white: np.ndarray, alpha: float) -> np.ndarray:
    """QUE scores (n,) of whitened rows (n, k): w_i^T U w_i / tr(U), U = exp(alpha (S - I) /
    (||S||_2 - 1)), S = the rows' second-moment matrix. Computed in S's eigenbasis."""
    second_moment = white.T @ white / white.shape[0]
    evals, evecs = np.linalg.eigh(second_moment)
    excess = max(float(evals[-1]) - 1.0, 1e-12)
    weights = np.exp(alpha * (evals - evals[-1]) / excess)  # exp(alpha (l - 1)/excess), rescaled
    return ((white @ evecs) ** 2) @ weights / weights.sum()
