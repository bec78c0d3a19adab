"""The detector interface shared by every detector (scikit-learn-like: small object, one job).

A detector turns an (N, D) feature matrix plus (N,) labels into (N,) suspicion scores, higher =
more suspicious, and flags a subset from those scores. The default flagging rule is the one the
spectral-signature paper uses: per class, flag the top ``eps_multiplier x expected_rate`` of that
class's stays, where ``expected_rate`` is the poison fraction the defender budgets for.

Parameters are checked when a detector is built (its config schema's ``__post_init__``), so a bad
value fails before any feature is read, with an error naming the parameter, the value and what
is valid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32 or float64, labels (N,) int64) or a ValueError naming the bad
    shape/value. float32 stays float32 (no copy of a million rows): :func:`per_class` widens
    each class's rows to float64 as it gathers them."""
    features = np.asarray(features)
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must be (N,) with N={features.shape[0]} rows of features, got {labels.shape}"
        )
    if not np.all(np.isfinite(features)):
        bad = np.argwhere(~np.isfinite(features))[0]
        raise ValueError(
            f"features hold non-finite values (first at row {bad[0]}, column {bad[1]}); "
            "impute missing values before scoring"
        )
    return features, labels.astype(np.int64)


def per_class(
    features: np.ndarray, labels: np.ndarray, score_class: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """(N,) scores from ``score_class((n_c, D) rows of one class) -> (n_c,)``, class by class.

    Detectors that model "what a normal member of this class looks like" score each class on its
    own: poison relabelled to the target class is unusual *for that class*.
    """
    features, labels = _check(features, labels)
    scores = np.zeros(features.shape[0], dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        scores[idx] = score_class(features[idx].astype(np.float64, copy=False))
    return scores


def smallest(values: np.ndarray, k: int) -> np.ndarray:
    """(n,) bool mask of the ``k`` smallest ``values`` (n,), ties taken in index order: the set
    ``np.argsort(values, kind="stable")[:k]`` names, in O(n) instead of a sort."""
    if k >= values.size:
        return np.ones(values.size, dtype=bool)
    if k <= 0:
        return np.zeros(values.size, dtype=bool)
    cut = np.partition(values, k - 1)[k - 1]
    if np.isnan(cut):  # fewer than k numbers: NaNs make up the rest, in the order a sort gives
        mask = np.zeros(values.size, dtype=bool)
        mask[np.argsort(values, kind="stable")[:k]] = True
        return mask
    mask = values < cut
    missing = k - int(mask.sum())
    mask[np.flatnonzero(values == cut)[:missing]] = True
    return mask


class Detector:
    """Base class. Subclasses implement :meth:`score`; :meth:`flag` may be overridden.

    Each detector is a dataclass that also inherits its config schema (``config.*DetectorConfig``),
    which holds its parameters, their defaults and their checks; among them ``eps_multiplier``:
    the flag budget per class is ``eps_multiplier x expected_rate`` (> 0; 1.5 as in Tran et al.
    2018, which over-removes a little to catch most poison).
    """

    name = "detector"
    eps_multiplier: float

    def score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) suspicion scores, higher = more suspicious."""
        raise NotImplementedError

    def flag(self, scores: np.ndarray, labels: np.ndarray, expected_rate: float) -> np.ndarray:
        """(N,) bool: per class, the top ``eps_multiplier * expected_rate`` fraction by score.

        ``expected_rate`` in (0, 1) is the poisoned fraction the defender budgets for *within a
        class*. Dirty-label poison all sits in the target class, so a poison rate p of N stays
        is ``p * N / n_target`` of that class; every other class then loses the same fraction
        to false positives (on a clean run, the flag rate is exactly the budget).
        """
        if not 0.0 < expected_rate < 1.0:
            raise ValueError(
                f"expected_rate={expected_rate!r} is invalid: expected a fraction in (0, 1)"
            )
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels)
        if labels.shape != scores.shape or scores.ndim != 1:
            raise ValueError(
                f"scores and labels must both be (N,), got {scores.shape} and {labels.shape}"
            )
        flagged = np.zeros(scores.shape[0], dtype=bool)
        budget = min(1.0, self.eps_multiplier * expected_rate)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = int(np.floor(budget * idx.size))
            if k == 0:
                continue
            flagged[idx[smallest(-scores[idx], k)]] = True  # the top k, ties by position
        return flagged
