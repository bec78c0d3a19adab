"""Data-level detectors: outlier scores on raw (N, D) feature rows, no model needed.

They suit the classic studies (feature noise, label flip) and serve as the model-free baseline
for backdoors: a rare-value trigger (HR = 250 bpm) is an outlier in input space before any model
sees it. Rows are whatever the caller gives (e.g. per-variable summaries of a stay, or the
flattened normalised grid); they must be finite (impute first).

By default each class is scored on its own (``per_class=True``): a stay relabelled to the target
class is unusual *for that class* even when it is ordinary for the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

from backdoor_study.config import (
    IsolationForestDetectorConfig,
    LocalOutlierFactorDetectorConfig,
    ZScoreDetectorConfig,
)
from backdoor_study.detectors.base import Detector, _check, per_class


class _OutlierDetector(Detector):
    """Scores each class on its own (``per_class``, a field of each detector's config) or all
    rows together."""

    def score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) outlier scores of features (N, D) with labels (N,); higher = more unusual."""
        features, labels = _check(features, labels)
        if not self.per_class:
            return self._outlier_scores(features.astype(np.float64, copy=False))
        return per_class(features, labels, self._outlier_scores)

    def _outlier_scores(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class IsolationForestDetector(IsolationForestDetectorConfig, _OutlierDetector):
    """scikit-learn's IsolationForest (Liu et al. 2008); score = minus ``score_samples``.

    ``n_estimators`` >= 1 trees, each on ``max_samples`` rows ("auto" = min(256, n), an int >= 1
    or a fraction in (0, 1]); ``random_state`` makes it deterministic. The parameters and their
    checks are ``config.IsolationForestDetectorConfig``'s.
    """

    def _outlier_scores(self, rows: np.ndarray) -> np.ndarray:
        if rows.shape[0] < 2:
            return np.zeros(rows.shape[0])
        max_samples = self.max_samples
        if isinstance(max_samples, int):
            max_samples = min(max_samples, rows.shape[0])
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=max_samples,
            random_state=self.random_state,
            n_jobs=1,
        ).fit(rows)
        return -forest.score_samples(rows)


@dataclass
class LocalOutlierFactorDetector(LocalOutlierFactorDetectorConfig, _OutlierDetector):
    """scikit-learn's LocalOutlierFactor (Breunig et al. 2000); score = the outlier factor.

    ``n_neighbors`` >= 1 (capped at the class size minus one). The parameters and their checks
    are ``config.LocalOutlierFactorDetectorConfig``'s.
    """

    def _outlier_scores(self, rows: np.ndarray) -> np.ndarray:
        if rows.shape[0] < 3:
            return np.zeros(rows.shape[0])
        lof = LocalOutlierFactor(n_neighbors=min(self.n_neighbors, rows.shape[0] - 1)).fit(rows)
        return -lof.negative_outlier_factor_


@dataclass
class ZScoreDetector(ZScoreDetectorConfig, _OutlierDetector):
    """Per-feature standard scores, reduced per row: ``max`` |z| (one extreme value, e.g. a
    rare-value trigger) or ``mean_square`` (mean z^2, diffuse noise).

    ``robust=True`` centres on the median and scales by 1.4826 x MAD, so the poison itself does
    not inflate the scale it is measured against; features with zero spread score 0. The
    parameters and their checks are ``config.ZScoreDetectorConfig``'s.
    """

    def _outlier_scores(self, rows: np.ndarray) -> np.ndarray:
        if self.robust:
            centre = np.median(rows, axis=0)
            spread = 1.4826 * np.median(np.abs(rows - centre), axis=0)
        else:
            centre = rows.mean(axis=0)
            spread = rows.std(axis=0)
        z = np.divide(rows - centre, spread, out=np.zeros_like(rows), where=spread > 0)
        if self.reduce == "max":
            return np.abs(z).max(axis=1)
        return np.mean(z**2, axis=1)
