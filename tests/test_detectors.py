"""Detectors: each finds planted poison well above chance, flags its budget, rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_study.detectors import DETECTORS, build_detector
from backdoor_study.metrics import detection_metrics

DATA_LEVEL = ("isolation_forest", "local_outlier_factor", "zscore")


def planted_outliers(
    n: int = 1000, d: int = 12, rate: float = 0.05, seed: int = 0, kind: str = "noise"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw rows (n, d), labels (n,), is_poisoned (n,); poisoned rows are relabelled to class 1
    and carry either feature noise (``noise``: N(0, 4^2) added to every feature) or one fixed
    extreme value in feature 3 (``rare_value``: a tight cluster, like a backdoor trigger)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = (rng.random(n) < 0.3).astype(np.int64)
    is_poisoned = np.zeros(n, dtype=bool)
    is_poisoned[rng.choice(n, int(rate * n), replace=False)] = True
    y[is_poisoned] = 1
    if kind == "noise":
        x[is_poisoned] += rng.normal(0.0, 4.0, (int(is_poisoned.sum()), d))
    else:
        x[is_poisoned, 3] = 8.0
    return x, y, is_poisoned


@pytest.mark.parametrize("name", DATA_LEVEL)
def test_data_level_detectors_find_feature_noise(name: str) -> None:
    x, y, is_poisoned = planted_outliers()
    det = build_detector(name)
    scores = det.score(x, y)
    assert scores.shape == (x.shape[0],) and np.all(np.isfinite(scores))
    # the budget is per class: the poisoned share of the target class, where the poison sits
    flagged = det.flag(scores, y, expected_rate=is_poisoned[y == 1].mean())
    m = detection_metrics(is_poisoned, scores, flagged, y, target_label=1)
    assert m["auroc"] > 0.95, m
    assert m["auroc_target"] > 0.95, m
    assert m["recall"] > 0.8, m


def test_zscore_finds_a_clustered_rare_value() -> None:
    # 50 identical trigger values are a dense cluster: LOF and IsolationForest mask them
    # (AUROC 0.35 / 0.76 here); a robust per-feature z-score does not.
    x, y, is_poisoned = planted_outliers(kind="rare_value")
    det = build_detector("zscore")
    scores = det.score(x, y)
    m = detection_metrics(is_poisoned, scores, det.flag(scores, y, 0.05), y, target_label=1)
    assert m["auroc"] > 0.99, m


@pytest.mark.parametrize("name", DATA_LEVEL)
def test_clean_data_flag_rate_is_the_budget(name: str) -> None:
    x, y, _ = planted_outliers(rate=0.0, seed=1)
    det = build_detector(name, eps_multiplier=1.0)
    flagged = det.flag(det.score(x, y), y, expected_rate=0.05)
    expected = sum(int(np.floor(0.05 * np.sum(y == c))) for c in (0, 1))
    assert flagged.sum() == expected
    m = detection_metrics(np.zeros_like(flagged), det.score(x, y), flagged, y, target_label=1)
    assert np.isnan(m["auroc"]) and np.isnan(m["recall"])
    assert m["precision"] == 0.0
    assert m["flagged_fraction"] == pytest.approx(expected / x.shape[0])


def test_scores_are_deterministic_and_per_class() -> None:
    x, y, _ = planted_outliers(n=300)
    det = build_detector("isolation_forest", random_state=3)
    np.testing.assert_array_equal(det.score(x, y), det.score(x, y))
    # per class: a row's score depends only on its own class's rows
    zs = build_detector("zscore")
    only_class_0 = zs.score(x[y == 0], y[y == 0])
    np.testing.assert_allclose(zs.score(x, y)[y == 0], only_class_0)


def test_registry_rejects_unknown_names_and_parameters() -> None:
    with pytest.raises(ValueError, match=r"detector='nope' is unknown: expected one of \[") as e:
        build_detector("nope")
    assert "isolation_forest" in str(e.value)
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['k'\].*n_estimators"):
        build_detector("isolation_forest", k=3)
    assert set(DATA_LEVEL) <= set(DETECTORS)


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("isolation_forest", {"n_estimators": 0}, "n_estimators"),
        ("isolation_forest", {"max_samples": 1.5}, "max_samples"),
        ("local_outlier_factor", {"n_neighbors": 0}, "n_neighbors"),
        ("zscore", {"reduce": "median"}, "reduce"),
        ("zscore", {"eps_multiplier": 0.0}, "eps_multiplier"),
    ],
)
def test_bad_parameters_are_rejected_up_front(name: str, params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}=.* is invalid: expected"):
        build_detector(name, **params)


def test_bad_inputs_are_rejected() -> None:
    det = build_detector("zscore")
    x, y, _ = planted_outliers(n=50)
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        det.score(x[:, 0], y)
    with pytest.raises(ValueError, match=r"labels must be \(N,\)"):
        det.score(x, y[:-1])
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4, column 2"):
        det.score(x, y)
    with pytest.raises(ValueError, match=r"expected_rate=1.2 is invalid"):
        det.flag(np.zeros(50), y, expected_rate=1.2)
