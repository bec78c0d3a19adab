"""Every metric the toolkit reports, computed in one place with scikit-learn / SciPy.

Entry points (train, eval, detect, reports) call these functions and nothing else computes a
metric. ``proba`` is always (N, n_classes) class probabilities; binary tasks use class 1
(in-hospital death) as the positive class, multi-class tasks average one-vs-rest (AUROC,
AUPRC) or per class (precision, recall, F1) with equal weight per class ("macro").

Undefined values (AUROC when ``y_true`` holds one class, an attack with no triggered samples)
are NaN, never an exception, so one odd split cannot sink a sweep.

This module owns numbers only: it reads no files, writes no files and never touches a model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from sklearn.preprocessing import label_binarize

# (y_sorted (N,), proba (..., N, C)) -> (...); see bootstrap_ci
ScoreFn = Callable[[np.ndarray, np.ndarray], "float | np.ndarray"]

NAN = float("nan")

# Keys of classification_metrics that attack_metrics reports for the poisoned test set.
POISON_KEYS = ("acc", "auroc", "auprc", "precision", "recall", "f1", "ece")

# Bound on resampled probabilities held at once by bootstrap_ci (float64 elements, ~128 MB).
_BOOTSTRAP_ELEMENTS = 16_000_000


def _check_inputs(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (y_true (N,) int, proba (N, C) float) or raise ValueError naming the bad shape."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(
            f"proba must be (N, n_classes >= 2) probabilities, got shape {proba.shape}"
        )
    if y_true.shape != (proba.shape[0],):
        raise ValueError(
            f"y_true must be (N,) with N={proba.shape[0]} rows of proba, got shape {y_true.shape}"
        )
    if y_true.size and (y_true.min() < 0 or y_true.max() >= proba.shape[1]):
        raise ValueError(
            f"y_true holds labels in [{y_true.min()}, {y_true.max()}]; valid labels are "
            f"0..{proba.shape[1] - 1} (one per column of proba)"
        )
    return y_true.astype(np.int64), proba


def _defined(y_true: np.ndarray, n_classes: int) -> bool:
    """Whether a ranking metric (AUROC / AUPRC) is defined: binary needs both classes present,
    one-vs-rest macro needs every class present (each class needs positives and negatives)."""
    present = np.unique(y_true).size
    return present >= 2 if n_classes == 2 else present == n_classes


def predict(proba: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Predicted labels (N,) from proba (N, C): binary ``proba[:, 1] >= threshold``, else argmax."""
    proba = np.asarray(proba)
    if proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1).astype(np.int64)


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """AUROC of proba (N, C) against y_true (N,): class 1 scores for binary tasks, one-vs-rest
    macro for more classes. NaN when undefined (a class the average needs is absent)."""
    y_true, proba = _check_inputs(y_true, proba)
    if not _defined(y_true, proba.shape[1]):
        return NAN
    if proba.shape[1] == 2:
        return float(roc_auc_score(y_true, proba[:, 1]))
    return float(
        roc_auc_score(
            y_true, proba, multi_class="ovr", average="macro", labels=np.arange(proba.shape[1])
        )
    )


def auprc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) of proba (N, C): class 1 for
    binary tasks, one-vs-rest macro for more classes. NaN when undefined."""
    y_true, proba = _check_inputs(y_true, proba)
    n_classes = proba.shape[1]
    if not _defined(y_true, n_classes):
        return NAN
    if n_classes == 2:
        return float(average_precision_score(y_true, proba[:, 1]))
    onehot = label_binarize(y_true, classes=np.arange(n_classes))
    return float(average_precision_score(onehot, proba, average="macro"))


def _auroc_batched(y_sorted: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """AUROC for a batch of resamples: y_sorted (N,), proba (..., N, C) -> (...).

    The Mann-Whitney identity AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with
    R_pos the rank sum of the positives (ties at mid-rank, as in sklearn), lets SciPy rank
    every resample in one call; sklearn's roc_auc_score costs ~2 ms a call, too slow for a
    loop of 1000. Equal to ``auroc`` (tested).
    """
    n_classes = proba.shape[-1]
    positive_classes = [1] if n_classes == 2 else range(n_classes)
    per_class = []
    for c in positive_classes:
        is_pos = y_sorted == c
        n_pos = is_pos.sum()
        n_neg = is_pos.size - n_pos
        ranks = stats.rankdata(proba[..., c], axis=-1)
        rank_sum = ranks[..., is_pos].sum(axis=-1)
        per_class.append((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return np.mean(per_class, axis=0)


def bootstrap_ci(
    y_true: np.ndarray,
    score_fn: ScoreFn,
    proba: np.ndarray,
    *,
    n: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap CI (low, high) of ``score_fn`` over samples, resampled by class.

    Each class is resampled with replacement on its own (``scipy.stats.bootstrap`` with one
    sample per class), so every resample keeps the observed class counts and a ranking metric
    stays defined. Resampled rows are arranged class by class, so the labels are the same
    vector ``y_sorted`` in every resample: ``score_fn(y_sorted (N,), proba (N, C)) -> float``,
    or with ``vectorized=True`` ``score_fn(y_sorted (N,), proba (B, N, C)) -> (B,)`` for a batch
    of B resamples at once. Randomness comes from ``np.random.default_rng(seed)`` alone.

    Returns (NaN, NaN) when ``n`` is 0, fewer than two classes are present, or a present class
    has a single sample (nothing to resample).
    """
    y_true, proba = _check_inputs(y_true, proba)
    classes, counts = np.unique(y_true, return_counts=True)
    if n <= 0 or classes.size < 2 or counts.min() < 2:
        return NAN, NAN
    y_sorted = np.repeat(classes, counts)
    class_rows = tuple(np.flatnonzero(y_true == c) for c in classes)

    def statistic(*rows: np.ndarray, axis: int = -1) -> float | np.ndarray:
        # rows: one (..., n_c) array of resampled row indices per class
        return score_fn(y_sorted, proba[np.concatenate(rows, axis=-1)])

    batch = max(1, _BOOTSTRAP_ELEMENTS // proba.size) if vectorized else None
    result = stats.bootstrap(
        class_rows,
        statistic,
        n_resamples=n,
        batch=batch,
        vectorized=vectorized,
        paired=False,
        confidence_level=ci,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017) of proba (N, C) against y_true (N,).

    Confidence is the predicted class's probability (argmax); samples fall into ``n_bins``
    equal-width bins (lo, hi] over [0, 1]; ECE = sum_b |B_b| / N * |accuracy(B_b) -
    mean confidence(B_b)|, in [0, 1]. NaN for an empty input.
    """
    y_true, proba = _check_inputs(y_true, proba)
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} is invalid: expected an integer >= 1")
    if y_true.size == 0:
        return NAN
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner_edges, confidence, side="left")  # (lo, hi] bins
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(
        np.bincount(bins, weights=correct, minlength=n_bins)
        - np.bincount(bins, weights=confidence, minlength=n_bins)
    )
    # sum_b |B_b|/N * |acc_b - conf_b| = sum_b |sum correct - sum confidence| / N
    return float(gap[count > 0].sum() / y_true.size)


THRESHOLD_METHODS = ("youden", "f1")


def select_threshold(y_true: np.ndarray, proba: np.ndarray, method: str = "youden") -> float:
    """A decision threshold on p(class 1), chosen on held-out data (the validation split).

    ``youden`` maximises sensitivity + specificity - 1 (``roc_curve``); ``f1`` maximises F1
    (``precision_recall_curve``). A number in (0, 1) is returned as is. Multi-class tasks use
    argmax, so the threshold is NaN there; with a single class present it falls back to 0.5.
    On an imbalanced task (12-14% mortality) 0.5 calls nearly every death a survival, which would
    make any attack toward "survived" look successful before it starts.
    """
    y_true, proba = _check_inputs(y_true, proba)
    try:
        value = float(method)
    except (TypeError, ValueError):
        value = None
    if value is not None:
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"threshold={method!r} is invalid: expected {list(THRESHOLD_METHODS)} or a number in (0, 1)"
            )
        return value
    if method not in THRESHOLD_METHODS:
        raise ValueError(
            f"threshold={method!r} is invalid: expected {list(THRESHOLD_METHODS)} or a number in (0, 1)"
        )
    if proba.shape[1] != 2:
        return float("nan")
    if not _defined(y_true, 2):
        return 0.5
    score = proba[:, 1]
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y_true, score)
        j = tpr - fpr
        finite = np.isfinite(thresholds)
        best = int(np.argmax(np.where(finite, j, -np.inf)))
        return float(thresholds[best])
    precision, recall, thresholds = precision_recall_curve(y_true, score)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    suffix: str = "clean",
    bootstrap: int = 1000,
    ci: float = 0.95,
    ece_bins: int = 15,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict:
    """Discrimination, threshold and calibration metrics of proba (N, C) against y_true (N,).

    Keys, each ending in ``_{suffix}``: ``acc``, ``auroc``, ``auprc``, ``precision``,
    ``recall``, ``f1``, ``balanced_acc``, ``ece`` (floats), ``confusion_matrix`` (C x C list of
    int lists, rows true labels 0..C-1, columns predicted), and ``auroc_{suffix}_ci_low`` /
    ``_ci_high``, ``auprc_{suffix}_ci_low`` / ``_ci_high``: a ``ci`` percentile bootstrap over
    ``bootstrap`` class-stratified resamples (NaN when ``bootstrap`` is 0 or the metric is
    undefined). Predictions are ``proba[:, 1] >= threshold`` for binary tasks (class 1
    positive), argmax otherwise, where precision / recall / F1 are macro averages; a precision
    or recall with no predicted / true positives is 0.
    """
    y_true, proba = _check_inputs(y_true, proba)
    n_classes = proba.shape[1]
    labels = np.arange(n_classes)
    y_pred = predict(proba, threshold)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true,
        y_pred,
        labels=labels if n_classes > 2 else None,
        average="binary" if n_classes == 2 else "macro",
        zero_division=0,
    )
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": a defined value, no need to shout
        warnings.simplefilter("ignore", UserWarning)
        balanced_acc = balanced_accuracy_score(y_true, y_pred) if y_true.size else NAN

    s = suffix
    out: dict = {
        f"acc_{s}": float(accuracy_score(y_true, y_pred)) if y_true.size else NAN,
        f"auroc_{s}": auroc(y_true, proba),
        f"auprc_{s}": auprc(y_true, proba),
        f"precision_{s}": float(precision),
        f"recall_{s}": float(recall),
        f"f1_{s}": float(f1),
        f"balanced_acc_{s}": float(balanced_acc),
        f"ece_{s}": expected_calibration_error(y_true, proba, ece_bins),
        f"confusion_matrix_{s}": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    for name, score_fn, vectorized in (
        ("auroc", _auroc_batched, True),
        ("auprc", auprc, False),
    ):
        low = high = NAN
        if bootstrap > 0 and np.isfinite(out[f"{name}_{s}"]):
            low, high = bootstrap_ci(
                y_true, score_fn, proba, n=bootstrap, ci=ci, seed=seed, vectorized=vectorized
            )
        out[f"{name}_{s}_ci_low"] = low
        out[f"{name}_{s}_ci_high"] = high
    return out


def attack_metrics(
    y_true: np.ndarray,
    proba_clean: np.ndarray,
    proba_triggered: np.ndarray,
    triggered_mask: np.ndarray,
    *,
    target_label: int,
    ece_bins: int = 15,
    prefix_model: str = "",
    threshold: float = 0.5,
) -> dict:
    """Backdoor metrics of one model on the clean and the poisoned test set.

    The poisoned test set is the test set with the trigger applied to every sample whose true
    label is not ``target_label``. Inputs: ``y_true`` (N,), ``proba_clean`` (N, C) on the clean
    test set, ``proba_triggered`` (N, C) on the poisoned test set (rows of untriggered samples
    equal the clean ones), ``triggered_mask`` (N,) bool, True where the trigger was applied.

    Returns, each key prefixed with ``prefix_model``:
    ``acc_poison``, ``auroc_poison``, ``auprc_poison``, ``precision_poison``,
    ``recall_poison``, ``f1_poison``, ``ece_poison`` (classification_metrics on the poisoned
    test set against the true labels, no bootstrap); ``ASR``, the fraction of triggered samples
    predicted as ``target_label``; ``ASR_baseline``, the same fraction for those samples without
    the trigger (what the model does anyway); ``ASR_flip``, among the triggered samples the
    model classifies correctly without the trigger (``n_flip_eligible`` of them), the fraction
    the trigger flips to ``target_label``: the backdoor separated from the model's own misses,
    the usual reading in the backdoor literature; ``confidence_shift``, mean p(target) with minus
    without the trigger over the triggered samples; ``median_p_target_triggered`` and
    ``median_p_target_clean``, the median p(target) over the triggered samples with and without
    the trigger (threshold-free: the validation-chosen threshold moves ASR on its own);
    ``n_triggered``. The ASR keys, ``confidence_shift`` and the medians are NaN when nothing was
    triggered, ``ASR_flip`` also when no triggered sample is classified correctly without the
    trigger. Predictions follow classification_metrics (``threshold`` for binary tasks, argmax
    otherwise).
    """
    y_true, proba_clean = _check_inputs(y_true, proba_clean)
    _, proba_triggered = _check_inputs(y_true, proba_triggered)
    n_classes = proba_clean.shape[1]
    if proba_triggered.shape != proba_clean.shape:
        raise ValueError(
            f"proba_triggered has shape {proba_triggered.shape}; expected proba_clean's "
            f"{proba_clean.shape}"
        )
    if not 0 <= target_label < n_classes:
        raise ValueError(
            f"target_label={target_label!r} is invalid: expected a class in 0..{n_classes - 1}"
        )
    triggered_mask = np.asarray(triggered_mask)
    if triggered_mask.shape != y_true.shape or triggered_mask.dtype != np.bool_:
        raise ValueError(
            f"triggered_mask must be a bool array of shape {y_true.shape}, got "
            f"{triggered_mask.dtype} {triggered_mask.shape}"
        )
    if np.any(y_true[triggered_mask] == target_label):
        # a triggered sample already labelled target would count as an attack success for free
        raise ValueError(
            f"triggered_mask marks {int(np.sum(y_true[triggered_mask] == target_label))} samples "
            f"whose true label is target_label={target_label}; the trigger is applied only to "
            "samples of other classes"
        )

    poisoned = classification_metrics(
        y_true,
        proba_triggered,
        suffix="poison",
        bootstrap=0,
        ece_bins=ece_bins,
        threshold=threshold,
    )
    out: dict = {f"{key}_poison": poisoned[f"{key}_poison"] for key in POISON_KEYS}

    n_triggered = int(triggered_mask.sum())
    asr = asr_baseline = asr_flip = shift = median_triggered = median_clean = NAN
    n_flip_eligible = 0
    if n_triggered:
        pred_triggered = predict(proba_triggered[triggered_mask], threshold)
        pred_clean = predict(proba_clean[triggered_mask], threshold)
        asr = float(np.mean(pred_triggered == target_label))
        asr_baseline = float(np.mean(pred_clean == target_label))
        # right without the trigger: only there can a prediction of the target be the trigger's doing
        eligible = pred_clean == y_true[triggered_mask]
        n_flip_eligible = int(eligible.sum())
        if n_flip_eligible:
            asr_flip = float(np.mean(pred_triggered[eligible] == target_label))
        p_triggered = proba_triggered[triggered_mask, target_label]
        p_clean = proba_clean[triggered_mask, target_label]
        shift = float(p_triggered.mean() - p_clean.mean())
        median_triggered = float(np.median(p_triggered))
        median_clean = float(np.median(p_clean))
    out.update(
        ASR=asr,
        ASR_baseline=asr_baseline,
        ASR_flip=asr_flip,
        confidence_shift=shift,
        median_p_target_triggered=median_triggered,
        median_p_target_clean=median_clean,
        n_triggered=n_triggered,
        n_flip_eligible=n_flip_eligible,
    )
    return {f"{prefix_model}{key}": value for key, value in out.items()}


def summarize_seeds(values: Sequence[float] | np.ndarray, ci: float = 0.95) -> dict:
    """Summary of one metric across seeds (NaN entries dropped): ``mean``, ``std`` (ddof=1),
    ``sem``, ``n`` and a Student-t ``ci`` interval ``ci_low`` / ``ci_high`` for the mean.
    ``std``, ``sem`` and the interval are NaN with fewer than two values; all but ``n`` with none.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    n = int(x.size)
    mean = float(x.mean()) if n else NAN
    std = sem = low = high = NAN
    if n >= 2:
        std = float(x.std(ddof=1))
        sem = float(std / np.sqrt(n))
        if sem > 0:
            low, high = (float(v) for v in stats.t.interval(ci, n - 1, loc=mean, scale=sem))
        else:
            low = high = mean
    return {"mean": mean, "std": std, "sem": sem, "n": n, "ci_low": low, "ci_high": high}


DETECTION_FPRS = (0.01, 0.05)


def _tpr_at_fpr(is_poisoned: np.ndarray, scores: np.ndarray, fpr_level: float) -> float:
    """The highest TPR any score threshold reaches without exceeding ``fpr_level`` FPR."""
    fpr, tpr, _ = roc_curve(is_poisoned, scores)
    return float(tpr[fpr <= fpr_level].max())


def _detection_block(is_poisoned: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict:
    n = int(is_poisoned.size)
    n_poisoned = int(is_poisoned.sum())
    n_flagged = int(flagged.sum())
    true_pos = int(np.sum(flagged & is_poisoned))
    ranked = 0 < n_poisoned < n  # both poisoned and clean stays: ranking metrics defined
    precision = true_pos / n_flagged if n_flagged else NAN
    recall = true_pos / n_poisoned if n_poisoned else NAN
    if np.isnan(precision) or np.isnan(recall):
        f1 = NAN
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    out = {
        "auroc": float(roc_auc_score(is_poisoned, scores)) if ranked else NAN,
        "auprc": float(average_precision_score(is_poisoned, scores)) if ranked else NAN,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }
    for level in DETECTION_FPRS:
        out[f"tpr_at_fpr_{level:g}"] = _tpr_at_fpr(is_poisoned, scores, level) if ranked else NAN
    out.update(
        flagged_fraction=n_flagged / n if n else NAN,
        n_scored=n,
        n_poisoned=n_poisoned,
        n_flagged=n_flagged,
    )
    return out


def detection_metrics(
    is_poisoned: np.ndarray,
    scores: np.ndarray,
    flagged: np.ndarray,
    labels: np.ndarray,
    target_label: int | None,
) -> dict:
    """How well a detector finds the poisoned training stays.

    Inputs, one entry per training stay: ``is_poisoned`` (N,) bool (the truth,
    ``poisoned_indices``), ``scores`` (N,) float suspicion (higher = more suspicious),
    ``flagged`` (N,) bool (what the detector would remove), ``labels`` (N,) the labels as trained
    on (poisoned stays carry their new label); ``target_label`` the attack's target class, or
    None for attacks without one.

    Keys: ``auroc``, ``auprc`` of the scores against ``is_poisoned``; ``precision``, ``recall``,
    ``f1`` of the flagged set; ``tpr_at_fpr_0.01`` / ``tpr_at_fpr_0.05`` (best TPR at that FPR);
    ``flagged_fraction``, ``n_scored``, ``n_poisoned``, ``n_flagged``; then each again with suffix
    ``_target`` over the stays labelled ``target_label`` only (where dirty-label poison sits, and
    where a per-class detector has to find it). Undefined values are NaN, not an exception: on a
    clean run (no poisoned stay) every ranking metric and recall is NaN, precision is 0 when
    anything was flagged, and ``flagged_fraction`` is the false-positive rate.
    """
    is_poisoned = np.asarray(is_poisoned)
    scores = np.asarray(scores, dtype=np.float64)
    flagged = np.asarray(flagged)
    labels = np.asarray(labels)
    if scores.ndim != 1:
        raise ValueError(f"scores must be (N,), got shape {scores.shape}")
    n = scores.shape[0]
    for key, arr, kind in (
        ("is_poisoned", is_poisoned, "b"),
        ("flagged", flagged, "b"),
        ("labels", labels, "iu"),
    ):
        if arr.shape != (n,) or arr.dtype.kind not in kind:
            raise ValueError(
                f"{key} must be a {'bool' if kind == 'b' else 'integer'} array of shape (N,) like "
                f"scores {scores.shape}, got {arr.dtype} {arr.shape}"
            )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold non-finite values; a detector must score every stay")
    out = _detection_block(is_poisoned, scores, flagged)
    if target_label is None:
        target = dict.fromkeys(out, NAN)
    else:
        in_target = labels == int(target_label)
        target = _detection_block(is_poisoned[in_target], scores[in_target], flagged[in_target])
    out.update({f"{key}_target": value for key, value in target.items()})
    return out


PRF_AVERAGES = ("macro", "weighted")


def averaged_prf(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, suffix: str) -> dict:
    """Precision, recall and F1 of hard predictions, each both ``macro`` (every class weighs the
    same) and ``weighted`` (by class support), as the classic study reports them.

    ``y_true``, ``y_pred`` (N,) labels in ``0..n_classes-1``. Keys ``{precision,recall,f1}_
    {macro,weighted}_{suffix}``; a class with no predicted / true members scores 0.
    """
    out: dict = {}
    for average in PRF_AVERAGES:
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(n_classes), average=average, zero_division=0
        )
        out[f"precision_{average}_{suffix}"] = float(precision)
        out[f"recall_{average}_{suffix}"] = float(recall)
        out[f"f1_{average}_{suffix}"] = float(f1)
    return out
