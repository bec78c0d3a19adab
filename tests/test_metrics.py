"""Metrics: known values, sklearn agreement, bootstrap CIs, calibration, attack metrics, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from backdoor_study.metrics import (
    _auroc_batched,
    attack_metrics,
    auroc,
    bootstrap_ci,
    classification_metrics,
    detection_metrics,
    expected_calibration_error,
    summarize_seeds,
)

CI_KEYS = ("auroc_clean_ci_low", "auroc_clean_ci_high", "auprc_clean_ci_low", "auprc_clean_ci_high")
POISON_KEYS = (
    "acc_poison",
    "auroc_poison",
    "auprc_poison",
    "precision_poison",
    "recall_poison",
    "f1_poison",
    "ece_poison",
)
FAST = settings(max_examples=40, deadline=None)


def binary_proba(p1: np.ndarray) -> np.ndarray:
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1.0 - p1, p1], axis=1)


def noisy_scores(n: int, seed: int, prevalence: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and binary proba (n, 2) from a mediocre classifier."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.int64)
    y[:2] = [0, 1]
    p1 = 1.0 / (1.0 + np.exp(-(1.5 * y - 1.0 + rng.standard_normal(n))))
    return y, binary_proba(p1)


def three_class(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    y[:3] = [0, 1, 2]
    logits = rng.standard_normal((n, 3))
    logits[np.arange(n), y] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


# ---------------------------------------------------------------------------- known values
def test_binary_known_values() -> None:
    # the textbook example: one positive ranked below a negative
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, binary_proba([0.1, 0.4, 0.35, 0.8]), bootstrap=0)
    assert m["auroc_clean"] == pytest.approx(0.75)
    assert m["auprc_clean"] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)
    # predictions at 0.5: [0, 0, 0, 1]
    assert m["acc_clean"] == pytest.approx(0.75)
    assert m["precision_clean"] == pytest.approx(1.0)
    assert m["recall_clean"] == pytest.approx(0.5)
    assert m["f1_clean"] == pytest.approx(2.0 / 3.0)
    assert m["balanced_acc_clean"] == pytest.approx(0.75)
    assert m["confusion_matrix_clean"] == [[2, 0], [1, 1]]
    assert all(math.isnan(m[k]) for k in CI_KEYS)


def test_binary_matches_sklearn() -> None:
    y, proba = noisy_scores(500, seed=1)
    m = classification_metrics(y, proba, bootstrap=0, threshold=0.4)
    y_pred = (proba[:, 1] >= 0.4).astype(int)
    assert m["acc_clean"] == pytest.approx(accuracy_score(y, y_pred))
    assert m["auroc_clean"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    assert m["auprc_clean"] == pytest.approx(average_precision_score(y, proba[:, 1]))
    assert m["precision_clean"] == pytest.approx(precision_score(y, y_pred))
    assert m["recall_clean"] == pytest.approx(recall_score(y, y_pred))
    assert m["f1_clean"] == pytest.approx(f1_score(y, y_pred))
    assert m["balanced_acc_clean"] == pytest.approx(balanced_accuracy_score(y, y_pred))
    assert m["confusion_matrix_clean"] == confusion_matrix(y, y_pred).tolist()


def test_multiclass_matches_sklearn_macro() -> None:
    y, proba = three_class(300, seed=2)
    m = classification_metrics(y, proba, suffix="iris", bootstrap=50)
    y_pred = proba.argmax(axis=1)
    assert m["auroc_iris"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    onehot = np.eye(3)[y]
    assert m["auprc_iris"] == pytest.approx(average_precision_score(onehot, proba))
    assert m["precision_iris"] == pytest.approx(precision_score(y, y_pred, average="macro"))
    assert m["recall_iris"] == pytest.approx(recall_score(y, y_pred, average="macro"))
    assert m["f1_iris"] == pytest.approx(f1_score(y, y_pred, average="macro"))
    assert np.array(m["confusion_matrix_iris"]).shape == (3, 3)
    assert m["auroc_iris_ci_low"] <= m["auroc_iris"] <= m["auroc_iris_ci_high"]
    assert m["auprc_iris_ci_low"] <= m["auprc_iris"] <= m["auprc_iris_ci_high"]


def test_value_types_are_json_friendly() -> None:
    y, proba = noisy_scores(60, seed=3)
    m = classification_metrics(y, proba, bootstrap=20)
    for key, value in m.items():
        if key.startswith("confusion_matrix"):
            assert all(type(v) is int for row in value for v in row)
        else:
            assert type(value) is float, key


def test_perfect_classifier() -> None:
    y = np.array([0, 1] * 20)
    m = classification_metrics(y, np.eye(2)[y], bootstrap=100)
    assert m["auroc_clean"] == 1.0
    assert m["auprc_clean"] == 1.0
    assert m["acc_clean"] == 1.0
    assert m["ece_clean"] == pytest.approx(0.0, abs=1e-12)
    assert m["auroc_clean_ci_low"] == m["auroc_clean_ci_high"] == 1.0


def test_single_class_gives_nan_not_an_exception() -> None:
    y = np.zeros(20, dtype=int)
    m = classification_metrics(y, binary_proba(np.linspace(0, 1, 20)), bootstrap=100)
    assert math.isnan(m["auroc_clean"]) and math.isnan(m["auprc_clean"])
    assert all(math.isnan(m[k]) for k in CI_KEYS)
    assert m["recall_clean"] == 0.0 and m["precision_clean"] == 0.0  # zero_division=0
    assert 0.0 <= m["acc_clean"] <= 1.0
    # a multi-class average over a class that is absent is undefined too
    y3, proba3 = three_class(30, seed=4)
    assert math.isnan(auroc(np.where(y3 == 2, 0, y3), proba3))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="proba must be"):
        classification_metrics(np.array([0, 1]), np.array([0.2, 0.8]))
    with pytest.raises(ValueError, match="y_true must be"):
        classification_metrics(np.array([0, 1, 1]), binary_proba([0.2, 0.8]))
    with pytest.raises(ValueError, match="valid labels are 0..1"):
        classification_metrics(np.array([0, 2]), binary_proba([0.2, 0.8]))


# ---------------------------------------------------------------------------- calibration
def test_ece_hand_computed() -> None:
    # 5 bins: (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]
    y = np.array([1, 0, 0, 1])
    proba = binary_proba([0.7, 0.58, 0.1, 0.55])
    # predicted class / confidence / correct: 1/.70/yes, 1/.58/no, 0/.90/yes, 1/.55/yes
    # bin (.4, .6]: {.58 wrong, .55 right}: acc .5, conf .565 -> 2/4 * .065
    # bin (.6, .8]: {.70 right}:            acc 1,  conf .70  -> 1/4 * .30
    # bin (.8, 1]:  {.90 right}:            acc 1,  conf .90  -> 1/4 * .10
    expected = 0.5 * 0.065 + 0.25 * 0.30 + 0.25 * 0.10
    assert expected_calibration_error(y, proba, n_bins=5) == pytest.approx(expected)


def test_ece_multiclass_hand_computed() -> None:
    y = np.array([0, 1, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    # confidences .9 (right), .5 (wrong), .6 (right); 2 bins (0, .5], (.5, 1]
    # bin (0, .5]: acc 0, conf .5 -> 1/3 * .5; bin (.5, 1]: acc 1, conf .75 -> 2/3 * .25
    expected = (0.5 + 2 * 0.25) / 3
    assert expected_calibration_error(y, proba, n_bins=2) == pytest.approx(expected)


def test_ece_of_overconfident_model() -> None:
    # always 100% sure, right half the time: ECE = |0.5 - 1|
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.eye(2)[[0, 0, 1, 1]]) == pytest.approx(0.5)


@FAST
@given(
    levels=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=8),
    n_bins=st.integers(min_value=2, max_value=20),
)
def test_ece_of_calibrated_binned_predictions_is_zero(levels: list[int], n_bins: int) -> None:
    # for each predicted p = k/20, exactly k of 20 samples are positive: accuracy equals
    # confidence within every bin, whichever bins the levels land in
    p1 = np.repeat(np.array(levels) / 20.0, 20)
    y = np.concatenate([np.r_[np.ones(k), np.zeros(20 - k)] for k in levels]).astype(int)
    assert expected_calibration_error(y, binary_proba(p1), n_bins) == pytest.approx(0.0, abs=1e-9)


def test_ece_of_sampled_calibrated_predictions_is_small() -> None:
    rng = np.random.default_rng(5)
    p1 = rng.random(20_000)
    y = (rng.random(20_000) < p1).astype(int)
    assert expected_calibration_error(y, binary_proba(p1)) < 0.02


# ---------------------------------------------------------------------------- bootstrap
def test_batched_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(6)
    y, proba = noisy_scores(200, seed=6)
    proba = binary_proba(np.round(proba[:, 1], 1))  # many ties
    y3, proba3 = three_class(150, seed=6)
    for labels, probs in ((y, proba), (y3, proba3)):
        order = np.argsort(labels, kind="stable")
        y_sorted = labels[order]
        resamples = np.stack(
            [
                np.concatenate(
                    [
                        rng.choice(order[y_sorted == c], (y_sorted == c).sum())
                        for c in np.unique(labels)
                    ]
                )
                for _ in range(5)
            ]
        )
        expected = [auroc(y_sorted, probs[r]) for r in resamples]
        np.testing.assert_allclose(_auroc_batched(y_sorted, probs[resamples]), expected)


def test_ci_contains_estimate_and_narrows_with_more_samples() -> None:
    widths = []
    for n in (150, 2000):
        y, proba = noisy_scores(n, seed=7)
        m = classification_metrics(y, proba, bootstrap=200, seed=1)
        for name in ("auroc", "auprc"):
            assert m[f"{name}_clean_ci_low"] <= m[f"{name}_clean"] <= m[f"{name}_clean_ci_high"]
        widths.append(m["auroc_clean_ci_high"] - m["auroc_clean_ci_low"])
    assert widths[1] < 0.6 * widths[0]


def test_ci_is_reproducible_and_seeded() -> None:
    y, proba = noisy_scores(200, seed=8)
    a = bootstrap_ci(y, _auroc_batched, proba, n=100, seed=3, vectorized=True)
    b = bootstrap_ci(y, _auroc_batched, proba, n=100, seed=3, vectorized=True)
    c = bootstrap_ci(y, _auroc_batched, proba, n=100, seed=4, vectorized=True)
    assert a == b and a != c
    # the unvectorised path draws the same resamples
    d = bootstrap_ci(y, auroc, proba, n=100, seed=3)
    assert d == pytest.approx(a)


def test_ci_level_widens_interval() -> None:
    y, proba = noisy_scores(200, seed=9)
    low90, high90 = bootstrap_ci(y, auroc, proba, n=200, ci=0.9)
    low99, high99 = bootstrap_ci(y, auroc, proba, n=200, ci=0.99)
    assert low99 <= low90 < high90 <= high99


def test_bootstrap_resamples_within_each_class() -> None:
    y, proba = noisy_scores(100, seed=10)
    seen = []

    def record(y_sorted: np.ndarray, p: np.ndarray) -> float:
        seen.append((y_sorted.copy(), p.copy()))
        return 0.0

    bootstrap_ci(y, record, proba, n=20)
    for y_sorted, p in seen:
        assert np.array_equal(y_sorted, np.sort(y))
        # every resampled row of class c is a row of class c
        for c in (0, 1):
            rows = {tuple(r) for r in proba[y == c]}
            assert all(tuple(r) in rows for r in p[y_sorted == c])


def test_bootstrap_with_a_lone_positive_is_nan() -> None:
    y = np.array([0] * 9 + [1])
    assert all(map(math.isnan, bootstrap_ci(y, auroc, binary_proba(np.linspace(0, 1, 10)))))


# ---------------------------------------------------------------------------- attack metrics
def attack_case(seed: int = 11, n: int = 200, target: int = 0):
    y, proba = noisy_scores(n, seed=seed, prevalence=0.4)
    return y, proba, y != target


def test_always_target_model_has_full_asr() -> None:
    y, proba_clean, mask = attack_case()
    proba_triggered = proba_clean.copy()
    proba_triggered[mask] = [0.99, 0.01]  # every triggered sample goes to class 0
    m = attack_metrics(y, proba_clean, proba_triggered, mask, target_label=0)
    assert m["ASR"] == 1.0
    assert m["n_triggered"] == int(mask.sum())
    assert m["confidence_shift"] > 0
    assert m["recall_poison"] == 0.0  # no death is recognised on the poisoned test set


def test_unaffected_model_asr_equals_baseline() -> None:
    y, proba, mask = attack_case()
    m = attack_metrics(y, proba, proba.copy(), mask, target_label=0)
    assert m["ASR"] == m["ASR_baseline"]
    assert m["confidence_shift"] == 0.0
    clean = classification_metrics(y, proba, suffix="poison", bootstrap=0)
    assert {k: m[k] for k in POISON_KEYS} == {k: clean[k] for k in POISON_KEYS}


def test_confidence_shift_sign() -> None:
    y, proba, mask = attack_case()
    towards = proba.copy()
    towards[mask, 0] = np.minimum(proba[mask, 0] + 0.1, 1.0)
    towards[mask, 1] = 1.0 - towards[mask, 0]
    away = proba.copy()
    away[mask, 0] = np.maximum(proba[mask, 0] - 0.1, 0.0)
    away[mask, 1] = 1.0 - away[mask, 0]
    assert attack_metrics(y, proba, towards, mask, target_label=0)["confidence_shift"] > 0
    assert attack_metrics(y, proba, away, mask, target_label=0)["confidence_shift"] < 0


def test_attack_metrics_multiclass_and_prefix() -> None:
    y, proba = three_class(90, seed=12)
    mask = y != 2
    triggered = proba.copy()
    triggered[mask] = [0.1, 0.1, 0.8]
    m = attack_metrics(y, proba, triggered, mask, target_label=2, prefix_model="clean_model_")
    assert m["clean_model_ASR"] == 1.0
    expected_baseline = float(np.mean(proba[mask].argmax(axis=1) == 2))
    assert m["clean_model_ASR_baseline"] == pytest.approx(expected_baseline)
    assert set(m) == {
        f"clean_model_{k}"
        for k in (
            *POISON_KEYS,
            "ASR",
            "ASR_baseline",
            "ASR_flip",
            "confidence_shift",
            "median_p_target_triggered",
            "median_p_target_clean",
            "n_triggered",
            "n_flip_eligible",
        )
    }


def test_asr_flip_counts_only_stays_right_without_the_trigger() -> None:
    # 6 deaths triggered toward survival (target 0), threshold 0.5 on p(death):
    # stays 0-3 are called deaths without the trigger (eligible), stays 4-5 are already missed.
    y = np.ones(6, dtype=np.int64)
    p_death_clean = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    p_death_triggered = np.array([0.1, 0.2, 0.7, 0.6, 0.2, 0.1])  # flips 0 and 1 only
    m = attack_metrics(
        y,
        binary_proba(p_death_clean),
        binary_proba(p_death_triggered),
        np.ones(6, dtype=bool),
        target_label=0,
    )
    assert m["n_flip_eligible"] == 4
    assert m["ASR_flip"] == pytest.approx(2 / 4)
    assert m["ASR"] == pytest.approx(4 / 6)  # the two misses count as successes here
    assert m["ASR_baseline"] == pytest.approx(2 / 6)
    # p(target) = 1 - p(death); medians over the six triggered stays
    assert m["median_p_target_clean"] == pytest.approx(np.median(1 - p_death_clean))
    assert m["median_p_target_triggered"] == pytest.approx(np.median(1 - p_death_triggered))


def test_asr_flip_nan_when_no_stay_is_right_without_the_trigger() -> None:
    y = np.array([0, 1, 1])
    proba = binary_proba(np.array([0.1, 0.2, 0.3]))  # every death already missed at 0.5
    m = attack_metrics(y, proba, proba, y != 0, target_label=0)
    assert m["n_flip_eligible"] == 0 and math.isnan(m["ASR_flip"])
    assert m["ASR"] == 1.0 and m["median_p_target_triggered"] == m["median_p_target_clean"]


def test_attack_metrics_nothing_triggered_is_nan() -> None:
    y, proba, _ = attack_case()
    m = attack_metrics(y, proba, proba, np.zeros_like(y, dtype=bool), target_label=0)
    assert m["n_triggered"] == 0
    assert math.isnan(m["ASR"]) and math.isnan(m["confidence_shift"])
    assert math.isnan(m["ASR_flip"]) and math.isnan(m["median_p_target_triggered"])


def test_attack_metrics_refuses_bad_inputs() -> None:
    y, proba, mask = attack_case()
    with pytest.raises(ValueError, match="target_label=2"):
        attack_metrics(y, proba, proba, mask, target_label=2)
    with pytest.raises(ValueError, match="whose true label is target_label=0"):
        attack_metrics(y, proba, proba, np.ones_like(mask), target_label=0)
    with pytest.raises(ValueError, match="bool array"):
        attack_metrics(y, proba, proba, mask.astype(int), target_label=0)


# ---------------------------------------------------------------------------- property tests
@st.composite
def labelled_proba(draw: st.DrawFn, n_classes: int | None = None):
    c = n_classes or draw(st.sampled_from([2, 3]))
    n = draw(st.integers(min_value=2, max_value=40))
    y = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    logits = np.array(
        draw(st.lists(st.floats(-5, 5), min_size=n * c, max_size=n * c)), dtype=np.float64
    ).reshape(n, c)
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


@FAST
@given(data=labelled_proba(), seed=st.integers(0, 2**16))
def test_metrics_invariant_to_sample_order(data, seed: int) -> None:
    y, proba = data
    perm = np.random.default_rng(seed).permutation(y.size)
    a = classification_metrics(y, proba, bootstrap=0)
    b = classification_metrics(y[perm], proba[perm], bootstrap=0)
    assert a.pop("confusion_matrix_clean") == b.pop("confusion_matrix_clean")
    assert b == pytest.approx(a, nan_ok=True)


@FAST
@given(data=labelled_proba(), n_bins=st.integers(2, 30))
def test_ece_in_unit_interval(data, n_bins: int) -> None:
    y, proba = data
    assert 0.0 <= expected_calibration_error(y, proba, n_bins) <= 1.0


@FAST
@given(data=labelled_proba(n_classes=2), shift=st.floats(-1, 1), target=st.sampled_from([0, 1]))
# a softmax row that does not sum to exactly 1: rebuilding p(class 1) as 1 - p(class 0) moved it
# across the 0.5 threshold by rounding alone (found by Hypothesis in a fresh clone's test run)
@example(data=(np.array([1, 0]), np.array([[0.5000000000000001, 0.5], [0.3, 0.7]])),
         shift=-1e-200, target=0)  # fmt: skip
def test_asr_in_unit_interval(data, shift: float, target: int) -> None:
    y, proba = data
    mask = y != target
    # p(class 1), which predict thresholds, moved towards the target by shift (away for < 0):
    # built from proba[:, 1] itself, so an unshifted stay keeps its prediction bit for bit
    sign = 1.0 if target == 1 else -1.0
    triggered = binary_proba(np.clip(proba[:, 1] + sign * shift * mask, 0.0, 1.0))
    m = attack_metrics(y, proba, triggered, mask, target_label=target)
    if mask.any():
        assert 0.0 <= m["ASR"] <= 1.0 and 0.0 <= m["ASR_baseline"] <= 1.0
        assert -1.0 <= m["confidence_shift"] <= 1.0
        # pushing p(target) up (down) can only gain (lose) attack successes
        assert (m["ASR"] >= m["ASR_baseline"]) if shift >= 0 else (m["ASR"] <= m["ASR_baseline"])
        # the stays called right without the trigger are exactly those not called the target
        assert m["n_flip_eligible"] == round((1.0 - m["ASR_baseline"]) * m["n_triggered"])
        if m["n_flip_eligible"] and shift >= 0:
            # every success is either one the model had anyway or a flip
            flips = m["ASR_baseline"] + (1.0 - m["ASR_baseline"]) * m["ASR_flip"]
            assert m["ASR"] == pytest.approx(flips)
        elif m["n_flip_eligible"]:
            assert m["ASR_flip"] == 0.0  # pushed away from the target: nothing flips to it
        moved = m["median_p_target_triggered"] - m["median_p_target_clean"]
        assert (moved >= -1e-12) if shift >= 0 else (moved <= 1e-12)  # 1 - (1 - p) rounding


# ---------------------------------------------------------------------------- seeds
def test_summarize_seeds_matches_scipy_and_ignores_nan() -> None:
    values = [0.81, 0.79, float("nan"), 0.84, 0.80]
    s = summarize_seeds(values)
    x = np.array([0.81, 0.79, 0.84, 0.80])
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(x.mean())
    assert s["std"] == pytest.approx(x.std(ddof=1))
    assert s["sem"] == pytest.approx(stats.sem(x))
    low, high = stats.t.interval(0.95, 3, loc=x.mean(), scale=stats.sem(x))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((low, high))


def test_summarize_seeds_degenerate_inputs() -> None:
    one = summarize_seeds([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["std"])
    assert math.isnan(one["ci_low"])
    none = summarize_seeds([float("nan")])
    assert none["n"] == 0 and math.isnan(none["mean"])
    same = summarize_seeds([0.5, 0.5, 0.5])
    assert same["std"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.5


def test_select_threshold_youden_f1_and_fixed():
    from backdoor_study.metrics import select_threshold

    y = np.array([0] * 80 + [1] * 20)
    p1 = np.concatenate([np.linspace(0.0, 0.3, 80), np.linspace(0.2, 0.5, 20)])
    proba = np.stack([1 - p1, p1], axis=1)
    t = select_threshold(y, proba, "youden")
    # the chosen cut separates far better than 0.5, which calls every stay negative here
    sens = (p1[y == 1] >= t).mean()
    spec = (p1[y == 0] < t).mean()
    assert sens + spec - 1 > 0.5 and (p1[y == 1] >= 0.5).mean() < 0.1
    assert 0 < select_threshold(y, proba, "f1") < 0.5
    assert select_threshold(y, proba, "0.3") == 0.3
    with pytest.raises(ValueError, match=r"threshold='best' is invalid.*youden"):
        select_threshold(y, proba, "best")
    assert np.isnan(select_threshold(np.array([0, 1, 2]), np.eye(3), "youden"))


# ---------------------------------------------------------------- detection metrics


def test_detection_metrics_known_values_and_sklearn_agreement() -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = (rng.random(n) < 0.4).astype(np.int64)
    is_poisoned = np.zeros(n, dtype=bool)
    is_poisoned[np.flatnonzero(labels == 1)[:20]] = True
    scores = rng.standard_normal(n) + 2.0 * is_poisoned
    flagged = scores > 1.5
    m = detection_metrics(is_poisoned, scores, flagged, labels, target_label=1)
    assert m["auroc"] == pytest.approx(roc_auc_score(is_poisoned, scores))
    assert m["auprc"] == pytest.approx(average_precision_score(is_poisoned, scores))
    assert m["precision"] == pytest.approx(precision_score(is_poisoned, flagged))
    assert m["recall"] == pytest.approx(recall_score(is_poisoned, flagged))
    assert m["f1"] == pytest.approx(f1_score(is_poisoned, flagged))
    assert m["flagged_fraction"] == pytest.approx(flagged.mean())
    assert (m["n_scored"], m["n_poisoned"], m["n_flagged"]) == (n, 20, int(flagged.sum()))
    t = labels == 1
    assert m["auroc_target"] == pytest.approx(roc_auc_score(is_poisoned[t], scores[t]))
    assert m["n_scored_target"] == int(t.sum())
    assert m["flagged_fraction_target"] == pytest.approx(flagged[t].mean())
    assert 0.0 <= m["tpr_at_fpr_0.01"] <= m["tpr_at_fpr_0.05"] <= 1.0


def test_detection_tpr_at_fpr_by_hand() -> None:
    # 100 clean scores 0..99, 10 poisoned: 5 above every clean one, 5 at the bottom
    scores = np.concatenate([np.arange(100.0), [200.0] * 5, [-1.0] * 5])
    is_poisoned = np.arange(110) >= 100
    m = detection_metrics(
        is_poisoned, scores, scores > 150, np.zeros(110, dtype=np.int64), target_label=0
    )
    assert m["tpr_at_fpr_0.01"] == pytest.approx(0.5)  # 1 false positive allowed: still 5/10
    assert m["tpr_at_fpr_0.05"] == pytest.approx(0.5)
    assert m["precision"] == 1.0 and m["recall"] == 0.5


def test_detection_metrics_on_a_clean_run_report_the_flag_rate_not_an_error() -> None:
    n = 200
    scores = np.linspace(0, 1, n)
    flagged = scores > 0.9
    labels = np.arange(n) % 2
    m = detection_metrics(np.zeros(n, dtype=bool), scores, flagged, labels, target_label=1)
    for key in ("auroc", "auprc", "recall", "f1", "tpr_at_fpr_0.01", "auroc_target"):
        assert math.isnan(m[key]), key
    assert m["precision"] == 0.0
    assert m["flagged_fraction"] == pytest.approx(flagged.mean())
    none_flagged = detection_metrics(
        np.zeros(n, dtype=bool), scores, np.zeros(n, dtype=bool), labels, target_label=None
    )
    assert math.isnan(none_flagged["precision"]) and none_flagged["flagged_fraction"] == 0.0
    assert math.isnan(none_flagged["auroc_target"])


def test_detection_metrics_reject_bad_shapes() -> None:
    ok = np.zeros(5, dtype=bool)
    with pytest.raises(ValueError, match="is_poisoned must be a bool array"):
        detection_metrics(np.zeros(5), np.zeros(5), ok, np.zeros(5, dtype=np.int64), 1)
    with pytest.raises(ValueError, match="flagged must be a bool array"):
        detection_metrics(ok, np.zeros(5), ok[:4], np.zeros(5, dtype=np.int64), 1)
    with pytest.raises(ValueError, match=r"scores must be \(N,\)"):
        detection_metrics(ok, np.zeros((5, 2)), ok, np.zeros(5, dtype=np.int64), 1)
    with pytest.raises(ValueError, match="non-finite"):
        detection_metrics(ok, np.full(5, np.nan), ok, np.zeros(5, dtype=np.int64), 1)
