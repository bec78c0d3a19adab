"""Detectors: each finds planted poison well above chance, flags its budget, rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---------------------------------------------------------------- penultimate-feature detectors

FEATURE_LEVEL = ("spectral", "activation_clustering", "spectre")


def planted_cluster(
    n: int = 2000, d: int = 32, rate: float = 0.05, seed: int = 0, shift: float = 4.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Penultimate-like features (n, d): two anisotropic Gaussian classes; poisoned rows (all
    labelled 0, as dirty-label poison) are spread like clean rows but shifted ``shift`` largest
    clean standard deviations along a random direction (on real MLP / LSTM penultimate features
    the poison's spread matches the clean class's; a tight cluster would instead capture
    MinCovDet's core, which favours concentrated points)."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(2.0, 0.5, d)
    y = (rng.random(n) < 0.3).astype(np.int64)
    x = rng.standard_normal((n, d)) * scale + 1.5 * y[:, None]
    is_poisoned = np.zeros(n, dtype=bool)
    is_poisoned[rng.choice(n, int(rate * n), replace=False)] = True
    y[is_poisoned] = 0
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    k = int(is_poisoned.sum())
    x[is_poisoned] = shift * 2.0 * direction + rng.standard_normal((k, d)) * scale
    return x, y, is_poisoned


@pytest.mark.parametrize("name", FEATURE_LEVEL)
def test_feature_detectors_find_a_planted_cluster(name: str) -> None:
    x, y, is_poisoned = planted_cluster()
    det = build_detector(name)
    scores = det.score(x, y)
    assert scores.shape == (x.shape[0],) and np.all(np.isfinite(scores))
    flagged = det.flag(scores, y, expected_rate=is_poisoned[y == 0].mean())
    m = detection_metrics(is_poisoned, scores, flagged, y, target_label=0)
    assert m["auroc"] > 0.9, m
    assert m["recall"] > 0.8, m


def test_spectre_beats_spectral_where_the_poison_hides_in_a_low_variance_direction() -> None:
    # the poison sits along the clean class's smallest axis: the top singular vector (spectral)
    # follows the large clean variance; robust whitening (spectre) exposes the poison
    rng = np.random.default_rng(2)
    n, d = 3000, 16
    y = np.zeros(n, dtype=np.int64)
    x = rng.standard_normal((n, d)) * np.linspace(4.0, 0.3, d)
    is_poisoned = np.zeros(n, dtype=bool)
    is_poisoned[:150] = True
    x[is_poisoned, -1] += 2.0
    spectral = build_detector("spectral").score(x, y)
    spectre = build_detector("spectre", n_components=16).score(x, y)
    a_spectral = detection_metrics(is_poisoned, spectral, is_poisoned, y, 0)["auroc"]
    a_spectre = detection_metrics(is_poisoned, spectre, is_poisoned, y, 0)["auroc"]
    assert a_spectre > 0.99 and a_spectral < 0.7, (a_spectre, a_spectral)


@pytest.mark.parametrize("name", ("spectral", "spectre"))
def test_feature_detectors_flag_their_budget_on_clean_features(name: str) -> None:
    x, y, _ = planted_cluster(rate=0.0, seed=3)
    det = build_detector(name)
    flagged = det.flag(det.score(x, y), y, expected_rate=0.04)
    expected = sum(int(np.floor(1.5 * 0.04 * np.sum(y == c))) for c in (0, 1))
    assert flagged.sum() == expected


def test_activation_clustering_flags_nothing_without_a_poison_split() -> None:
    x, y, _ = planted_cluster(rate=0.0, seed=4)
    det = build_detector("activation_clustering")
    scores = det.score(x, y)
    assert not any(r["poison_split"] for r in det.class_report_.values()), det.class_report_
    assert not det.flag(scores, y, expected_rate=0.05).any()
    # ... but its scores still rank: a continuous margin, not 0/1
    assert np.unique(scores).size > 100


def test_activation_clustering_flags_the_small_cluster_and_needs_score_first() -> None:
    x, y, is_poisoned = planted_cluster()
    det = build_detector("activation_clustering")
    with pytest.raises(ValueError, match="call score"):
        det.flag(np.zeros(len(y)), y, 0.05)
    scores = det.score(x, y)
    assert det.class_report_[0]["poison_split"] and not det.class_report_[1]["poison_split"]
    flagged = det.flag(scores, y, expected_rate=0.05)
    m = detection_metrics(is_poisoned, scores, flagged, y, target_label=0)
    assert m["recall"] > 0.95 and m["precision"] > 0.85, m
    budget = build_detector("activation_clustering", flag_rule="budget")
    flagged = budget.flag(budget.score(x, y), y, expected_rate=0.05)
    assert flagged.sum() == int(np.floor(0.075 * np.sum(y == 0))) and not flagged[y == 1].any()


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("activation_clustering", {"reducer": "tsne"}, "reducer"),
        ("activation_clustering", {"rule": "gap"}, "rule"),
        ("activation_clustering", {"size_threshold": 0.7}, "size_threshold"),
        ("activation_clustering", {"flag_rule": "all"}, "flag_rule"),
        ("activation_clustering", {"n_components": 0}, "n_components"),
        ("spectre", {"alpha": -1.0}, "alpha"),
        ("spectre", {"support_fraction": 1.0}, "support_fraction"),
        ("spectre", {"estimator": "ransac"}, "estimator"),
        ("spectre", {"n_components": 0}, "n_components"),
        ("spectral", {"eps_multiplier": -1}, "eps_multiplier"),
        ("spectral", {"tail": "left"}, "tail"),
        ("saliency", {"method": "lime"}, "method"),
        ("saliency", {"unit": "hour"}, "unit"),
        ("saliency", {"n_steps": 0}, "n_steps"),
        ("saliency", {"evidence": "mean"}, "evidence"),
    ],
)
def test_bad_feature_detector_parameters_are_rejected(name: str, params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}=.* is invalid: expected"):
        build_detector(name, **params)


def test_one_sided_spectral_does_not_flag_the_clean_far_end() -> None:
    # poison at one end of the top direction: the squared projection (the paper's) also ranks the
    # clean stays at the other end as suspicious; the projection signed towards the tail does not
    rng = np.random.default_rng(5)
    n, d = 2000, 8
    x = rng.standard_normal((n, d)) * np.array([3.0] + [1.0] * (d - 1))
    is_poisoned = np.zeros(n, dtype=bool)
    is_poisoned[:100] = True
    x[is_poisoned, 0] = rng.normal(5.0, 1.0, 100)
    y = np.zeros(n, dtype=np.int64)
    auroc = {
        tail: detection_metrics(
            is_poisoned, build_detector("spectral", tail=tail).score(x, y), is_poisoned, y, 0
        )["auroc"]
        for tail in ("skew", "both")
    }
    assert auroc["skew"] > 0.9 and auroc["skew"] - auroc["both"] > 0.05, auroc
    # the sign of the data does not matter
    mirrored = build_detector("spectral").score(-x, y)
    assert detection_metrics(is_poisoned, mirrored, is_poisoned, y, 0)["auroc"] > 0.9


def test_concentration_steps_ignore_a_far_cluster_and_mcd_agrees() -> None:
    from backdoor_study.detectors.spectre import concentration_steps

    rng = np.random.default_rng(3)
    clean = rng.normal(size=(950, 4)) * np.array([1.0, 2.0, 0.5, 1.0])
    far = rng.normal(loc=8.0, size=(50, 4))
    location, covariance = concentration_steps(np.vstack([clean, far]), 0.9)
    # the core is the clean rows: their mean and spread, not pulled towards the 5% far cluster
    np.testing.assert_allclose(location, 0.0, atol=0.15)
    assert np.all(np.diag(covariance) < np.array([1.0, 4.0, 0.25, 1.0]) * 1.1)
    x = np.vstack([clean, far])
    y = np.zeros(1000, dtype=np.int64)
    is_far = np.arange(1000) >= 950
    for estimator in ("csteps", "mcd"):
        scores = build_detector("spectre", estimator=estimator, max_fit_rows=1000).score(x, y)
        assert detection_metrics(is_far, scores, is_far, y, 0)["auroc"] > 0.99, estimator


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([-3.0, -1.0, -0.0, 0.0, 1.0, 2.0, float("nan")]), min_size=1, max_size=40
    ),
    st.integers(min_value=0, max_value=45),
)
def test_top_k_selection_keeps_what_a_stable_sort_keeps_ties_and_nan_included(
    values: list[float], h: int
) -> None:
    # concentration steps keep the h smallest distances; the O(n) selection must name exactly
    # the rows a stable argsort names (few distinct values make ties common; NaN sorts last)
    # flag's top-k per class uses the same selection, on minus the scores
    from backdoor_study.detectors.base import smallest

    distance = np.asarray(values, dtype=np.float64)
    expected = np.zeros(distance.size, dtype=bool)
    expected[np.argsort(distance, kind="stable")[:h]] = True
    np.testing.assert_array_equal(smallest(distance, h), expected)


def test_concentration_steps_match_np_cov_bit_for_bit() -> None:
    # the detection tables were made with np.cov; the core's covariance must keep its bits
    from backdoor_study.detectors.spectre import _mean_and_covariance

    rows = np.random.default_rng(5).normal(size=(777, 16)) * np.linspace(3, 0.1, 16) + 2.0
    location, covariance = _mean_and_covariance(rows)
    np.testing.assert_array_equal(covariance, np.cov(rows, rowvar=False))
    np.testing.assert_array_equal(location, rows.mean(axis=0))
