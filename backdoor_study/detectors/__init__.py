"""Poison detectors: per-sample suspicion scores over a run's training stays.

Every detector follows one life cycle (``backdoor_study.detectors.base.Detector``):
``scores = detector.score(features, labels)`` (higher = more suspicious), then
``flagged = detector.flag(scores, labels, expected_rate)``. Model-based detectors take the
model's ``penultimate()`` features; data-level detectors take the raw input features.
Detectors own scores only: they read and write no files (``detect.py`` does the run-directory
plumbing once).

``build_detector(name, **params)`` builds one by its registered name (``DETECTORS``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from backdoor_study.detectors.base import Detector
from backdoor_study.detectors.data_level import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    ZScoreDetector,
)

#: registered name -> detector class; the name is also the class's ``name`` attribute
DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        IsolationForestDetector,
        LocalOutlierFactorDetector,
        ZScoreDetector,
    )
}

__all__ = ["DETECTORS", "Detector", "build_detector"]


def build_detector(name: str, **params: Any) -> Detector:
    """The detector registered as ``name``, built with ``params`` (checked up front).

    Raises ValueError naming an unknown detector or parameter and listing the valid ones.
    """
    if name not in DETECTORS:
        raise ValueError(f"detector={name!r} is unknown: expected one of {sorted(DETECTORS)}")
    cls = DETECTORS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"detector {name!r} has no parameter(s) {unknown}: valid parameters are {valid}"
        )
    return cls(**params)
