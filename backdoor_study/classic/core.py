"""The classic study's one path from config to a fitted, scored scikit-learn model.

table (``load_dataset`` + ``tabular_features``) -> stratified train/test holdout
(``holdout_split``) -> poisoning (``poison_dataset``: feature noise or label flips) -> optional
sanitisation (a data-level detector from ``backdoor_study.detectors`` flags training rows, which
are dropped) -> pipeline (median imputation, standardisation, the ``_target_`` estimator) ->
metrics (``backdoor_study.metrics``). Single runs, learning curves and the accuracy paradox all
fit through :func:`fit_and_score`.

This module owns the sklearn side only: it reads and writes no files and logs nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from sklearn.base import ClassifierMixin
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from backdoor_study.config import CLASSIC_MODELS, ConfigError
from backdoor_study.data import load_dataset
from backdoor_study.data.schema import ClinicalDataset, DataValidationError
from backdoor_study.data.summaries import tabular_features
from backdoor_study.detectors import DETECTORS, build_detector
from backdoor_study.metrics import averaged_prf, classification_metrics, detection_metrics, predict


@dataclass
class Table:
    """A loaded dataset and its flat feature matrix ``x`` (N, D), NaN where unknown."""

    dataset: ClinicalDataset
    x: np.ndarray
    feature_names: list[str]
    source: dict[str, Any]

    @property
    def y(self) -> np.ndarray:
        return self.dataset.y


def as_table(ds: ClinicalDataset, source: dict[str, Any] | None = None) -> Table:
    """``ds`` with its features; refuses a table a classifier cannot learn (a single class)."""
    present = np.unique(ds.y)
    if present.size < 2:
        raise DataValidationError(
            f"data '{ds.name}' holds a single class ({[ds.class_names[c] for c in present]}, "
            f"{ds.n_stays} rows): a classifier needs at least two classes"
        )
    x, names = tabular_features(ds)
    return Table(ds, x, names, dict(source or {}))


def load_table(data_cfg: Any) -> Table:
    """The dataset a ``data`` config node names, as a :class:`Table`."""
    loaded = load_dataset(data_cfg)
    return as_table(loaded.dataset, loaded.source)


def model_params(model_cfg: Any) -> dict[str, Any]:
    """The model node as plain values; refuses anything but a classic sklearn model."""
    params = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    name = params.get("name")
    if name not in CLASSIC_MODELS:
        raise ConfigError(
            f"model.name={name!r} is invalid for the classic study: expected one of "
            f"{list(CLASSIC_MODELS)} (torch models such as mlp or lstm run with backdoor_study.train)"
        )
    return params


def build_estimator(model_cfg: Any, seed: int) -> Pipeline:
    """Median imputation -> standardisation -> the ``_target_`` estimator (``random_state=seed``
    where it has one). Imputation and scaling are fitted on the training rows only."""
    params = model_params(model_cfg)
    params.pop("name")
    estimator = hydra.utils.instantiate(params, _convert_="all")
    if not isinstance(estimator, ClassifierMixin):
        raise ConfigError(f"model._target_={params['_target_']!r} is not a scikit-learn classifier")
    # nested estimators too (svm: CalibratedClassifierCV(SVC)): estimator__random_state
    seeded = [k for k in estimator.get_params() if k.split("__")[-1] == "random_state"]
    estimator.set_params(**dict.fromkeys(seeded, int(seed)))
    return make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), estimator
    )


def class_proba(pipeline: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities; a class absent from the training rows gets probability 0."""
    proba = pipeline.predict_proba(x)
    out = np.zeros((x.shape[0], n_classes), dtype=np.float64)
    out[:, pipeline.classes_.astype(np.int64)] = proba
    return out


def fit_and_score(
    model_cfg: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    class_weighting: bool = False,
) -> tuple[Pipeline, dict[str, Any]]:
    """Fit the model on (x_train (N, D), y_train (N,)) and score it on the training rows (as
    fitted, poisoned labels included) and the clean test rows (M, D), (M,).

    Metrics: ``classification_metrics`` on the test rows (suffix ``_test``, no bootstrap CIs),
    macro and weighted precision / recall / F1 (``averaged_prf``), ``acc_train``,
    ``balanced_acc_train`` and ``train_test_gap`` = acc_train - acc_test. Binary predictions are
    p(class 1) >= 0.5, multi-class argmax. ``class_weighting`` fits with balanced sample weights.
    """
    pipeline = build_estimator(model_cfg, seed)
    fit_params = {}
    if class_weighting:
        step = pipeline.steps[-1][0]
        fit_params[f"{step}__sample_weight"] = compute_sample_weight("balanced", y_train)
    pipeline.fit(x_train, y_train, **fit_params)
    proba_test = class_proba(pipeline, x_test, n_classes)
    proba_train = class_proba(pipeline, x_train, n_classes)
    scored = classification_metrics(y_test, proba_test, suffix="test", bootstrap=0)
    # CIs here come from seeds (the report), not from bootstrapping one test split
    metrics = {k: v for k, v in scored.items() if "_ci_" not in k}
    metrics |= averaged_prf(y_test, predict(proba_test), n_classes, "test")
    train = classification_metrics(y_train, proba_train, suffix="train", bootstrap=0)
    metrics["acc_train"] = train["acc_train"]
    metrics["balanced_acc_train"] = train["balanced_acc_train"]
    metrics["train_test_gap"] = train["acc_train"] - metrics["acc_test"]
    return pipeline, metrics


def sanitise(
    mitigation_cfg: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    poisoned_indices: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Flag training rows with the mitigation's data-level detector; return (flagged (N,) bool,
    ``detection_*`` metrics against the true ``poisoned_indices`` (positions into the rows)).

    The detector scores median-imputed, standardised rows (finite, one scale for every feature)
    per class of the labels as trained on, and flags the top ``eps_multiplier x expected_rate``
    of each class.
    """
    name = str(mitigation_cfg.detector)
    params = {"random_state": int(seed)} if _has_field(name, "random_state") else {}
    detector = build_detector(name, **params)
    rows = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()
    ).fit_transform(x_train)
    scores = detector.score(rows, y_train)
    flagged = detector.flag(scores, y_train, float(mitigation_cfg.expected_rate))
    is_poisoned = np.zeros(y_train.size, dtype=bool)
    is_poisoned[np.asarray(poisoned_indices, dtype=np.int64)] = True
    found = detection_metrics(is_poisoned, scores, flagged, y_train, target_label=None)
    return flagged, {f"detection_{k}": v for k, v in found.items() if not k.endswith("_target")}


def _has_field(detector: str, field: str) -> bool:
    cls = DETECTORS.get(detector)
    return cls is not None and field in {f.name for f in dataclasses.fields(cls)}
