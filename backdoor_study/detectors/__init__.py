"""Poison detectors: per-sample suspicion scores over a run's training stays.

Every detector follows one life cycle (``backdoor_study.detectors.base.Detector``):
``scores = detector.score(features, labels)`` (higher = more suspicious), then
``flagged = detector.flag(scores, labels, expected_rate)``. Model-based detectors take the
model's ``penultimate()`` features; data-level detectors take the raw input features.
Detectors own scores only: they read and write no files (``detect.py`` does the run-directory
plumbing once).
"""
