#!/usr/bin/env python
"""The reference figure for PhysioNet 2012: logistic regression on per-variable summaries.

Features: ``per_variable_summaries`` of the hourly grid (last, mean, min, max, std, fraction
observed for each of the 37 time series), the numeric statics (Age, Height, AdmissionWeight) and
one-hot categorical statics (Gender, ICUType; unknown = all zeros). Model: a scikit-learn Pipeline
of median imputation, standardisation and L2 logistic regression, whose inverse regularisation C is
chosen from a fixed grid by 3-fold CV AUROC on the training data only. Trained on set A; reported
on set B (external validation: AUROC, AUPRC), plus 5-fold stratified CV AUROC on set A (nested: C
is chosen inside each outer fold). Nothing is tuned on set B.

    python scripts/logreg_reference.py [--root DIR] [--cache-dir data/cache] [--json out.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from backdoor_study.config import PhysioNet2012DataConfig
from backdoor_study.data import load_dataset
from backdoor_study.data.physionet2012 import default_root
from backdoor_study.data.summaries import tabular_features
from backdoor_study.metrics import auprc, auroc
from backdoor_study.utils import write_json

SEED = 0
N_FOLDS = 5
INNER_FOLDS = 3
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def make_model() -> GridSearchCV:
    """The pipeline, with C chosen by inner CV on whatever data ``fit`` is given."""
    pipeline = make_pipeline(
        SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=5000)
    )
    inner = StratifiedKFold(n_splits=INNER_FOLDS, shuffle=True, random_state=SEED)
    return GridSearchCV(
        pipeline, {"logisticregression__C": list(C_GRID)}, scoring="roc_auc", cv=inner, n_jobs=1
    )


def cross_validated_auroc(x: np.ndarray, y: np.ndarray) -> list[float]:
    folds = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=SEED)
    scores = []
    for train_idx, test_idx in folds.split(x, y):
        model = make_model().fit(x[train_idx], y[train_idx])
        scores.append(auroc(y[test_idx], model.predict_proba(x[test_idx])))
    return scores


def run(root: Path, cache_dir: str, n_steps: int = 48) -> dict[str, Any]:
    cfg = OmegaConf.structured(
        PhysioNet2012DataConfig(
            root=str(root), train_sets=["a"], test_sets=["b"], n_steps=n_steps, cache_dir=cache_dir
        )
    )
    loaded = load_dataset(cfg)
    assert loaded.external_test is not None
    x, names = tabular_features(loaded.dataset)
    y = loaded.dataset.y
    is_b = loaded.external_test
    x_a, y_a, x_b, y_b = x[~is_b], y[~is_b], x[is_b], y[is_b]

    cv = cross_validated_auroc(x_a, y_a)
    model = make_model().fit(x_a, y_a)
    proba_b = model.predict_proba(x_b)
    return {
        "model": "median imputation + standardisation + L2 logistic regression",
        "c_grid": list(C_GRID),
        "c_chosen_on_a": float(model.best_params_["logisticregression__C"]),
        "n_features": len(names),
        "n_steps": n_steps,
        "train": {"set": "a", "n_stays": int(y_a.size), "n_deaths": int(y_a.sum())},
        "test": {"set": "b", "n_stays": int(y_b.size), "n_deaths": int(y_b.sum())},
        "auroc_a_to_b": auroc(y_b, proba_b),
        "auprc_a_to_b": auprc(y_b, proba_b),
        "prevalence_b": float(y_b.mean()),
        "cv_auroc_a_folds": cv,
        "cv_auroc_a_mean": float(np.mean(cv)),
        "cv_auroc_a_std": float(np.std(cv)),
        "cv": {
            "n_splits": N_FOLDS,
            "inner_splits": INNER_FOLDS,
            "shuffle": True,
            "random_state": SEED,
        },
        "source_files": loaded.source["files"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--root", type=Path, default=default_root(), help="directory of the challenge files"
    )
    p.add_argument(
        "--cache-dir", default="data/cache", help="Parquet cache ('' to parse every time)"
    )
    p.add_argument("--n-steps", type=int, default=48)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    with threadpool_limits(limits=1):  # multi-threaded BLAS is ~20x slower here on shared cores
        r = run(args.root, args.cache_dir, args.n_steps)
    print(
        f"logistic regression on {r['n_features']} summary + static features, {r['n_steps']} h grid"
    )
    print(f"  train set A: {r['train']['n_stays']} stays, {r['train']['n_deaths']} deaths")
    print(f"  C chosen on A by {INNER_FOLDS}-fold CV from {list(C_GRID)}: {r['c_chosen_on_a']:g}")
    print(
        f"  {N_FOLDS}-fold nested CV AUROC on A: "
        f"{r['cv_auroc_a_mean']:.4f} +/- {r['cv_auroc_a_std']:.4f}"
    )
    print(f"  external set B: {r['test']['n_stays']} stays, {r['test']['n_deaths']} deaths")
    print(f"  AUROC A->B: {r['auroc_a_to_b']:.4f}   AUPRC A->B: {r['auprc_a_to_b']:.4f}")
    print(f"  (AUPRC of a random ranking = prevalence {r['prevalence_b']:.4f})")
    if args.json:
        write_json(args.json, r)
    return r


if __name__ == "__main__":
    main()
