"""Poison detectors: per-sample suspicion scores over a run's training stays.

Every detector follows one life cycle (``backdoor_study.detectors.base.Detector``):
``scores = detector.score(features, labels)`` (higher = more suspicious), then
``flagged = detector.flag(scores, labels, expected_rate)``. Model-based detectors take the
model's ``penultimate()`` features; data-level detectors take the raw input features.
Detectors own scores only: they read and write no files (``detect.py`` does the run-directory
plumbing once).

``build_detector(name, **params)`` builds one by its registered name (``DETECTORS``):

- on penultimate features (N, D): ``spectral`` (Tran et al. 2018), ``activation_clustering``
  (Chen et al. 2018), ``spectre`` (Hayase et al. 2021, robust whitening + QUE);
- on attributions (N, T, F): ``saliency`` (``SaliencyDetector.attributions(model, batch,
  labels)`` first, then ``score``);
- on raw input rows (N, D), no model: ``isolation_forest``, ``local_outlier_factor``, ``zscore``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from backdoor_study.detectors.activation_clustering import ActivationClustering
from backdoor_study.detectors.base import Detector
from backdoor_study.detectors.data_level import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    ZScoreDetector,
)
from backdoor_study.detectors.saliency import SaliencyDetector
from backdoor_study.detectors.spectral import SpectralSignature
from backdoor_study.detectors.spectre import Spectre

#: registered name -> detector class; the name is also the class's ``name`` attribute
DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        SpectralSignature,
        ActivationClustering,
        Spectre,
        SaliencyDetector,
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
    valid = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "name"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"detector {name!r} has no parameter(s) {unknown}: valid parameters are {valid}"
        )
    return cls(**params)
