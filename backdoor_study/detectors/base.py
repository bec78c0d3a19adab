"""The detector interface shared by every detector (scikit-learn-like: small object, one job).

A detector turns an (N, D) feature matrix plus (N,) labels into (N,) suspicion scores, higher =
more suspicious, and flags a subset from those scores. The default flagging rule is the one the
spectral-signature paper uses: per class, flag the top ``eps_multiplier x expected_rate`` of that
class's stays, where ``expected_rate`` is the poison fraction the defender budgets for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must be (N,) with N={features.shape[0]} rows of features, got {labels.shape}"
        )
    return features, labels.astype(np.int64)


@dataclass
class Detector:
    """Base class. Subclasses implement :meth:`score`; :meth:`flag` may be overridden."""

    eps_multiplier: float = 1.5

    name = "detector"

    def score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) suspicion scores, higher = more suspicious."""
        raise NotImplementedError

    def flag(self, scores: np.ndarray, labels: np.ndarray, expected_rate: float) -> np.ndarray:
        """(N,) bool: per class, the top ``eps_multiplier * expected_rate`` fraction by score."""
        if not 0.0 < expected_rate < 1.0:
            raise ValueError(
                f"expected_rate={expected_rate!r} is invalid: expected a fraction in (0, 1)"
            )
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels)
        flagged = np.zeros(scores.shape[0], dtype=bool)
        budget = min(1.0, self.eps_multiplier * expected_rate)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = int(np.floor(budget * idx.size))
            if k == 0:
                continue
            top = idx[np.argsort(-scores[idx], kind="stable")[:k]]
            flagged[top] = True
        return flagged
