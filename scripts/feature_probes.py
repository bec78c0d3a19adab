"""Is the poison a direction in a run's penultimate features, and does spectre find it?

    python scripts/feature_probes.py RUN_DIR [RUN_DIR ...] [--no-control] [--components K ...]
        [--supports F ...]

For each poisoned run directory, on the penultimate features (``training.penultimate_features``)
of the training stays labelled with the target class:

- ``probe``: AUROC of a logistic regression trained *with* the poisoned labels, 5-fold
  cross-validated: whether a linear direction separates the poisoned stays at all;
- ``d'``: the Mahalanobis distance between the poisoned and clean means (clean covariance,
  Ledoit-Wolf), in all dimensions and within the top 16 principal components;
- ``ica``: the best of 16 FastICA directions (each signed towards its longer tail) as a score, its
  skewness, and the largest skewness of any of the 16 (heavy-tailed clean directions);
- ``spectre``: the spectre detector's AUROC with its defaults (over every training stay), with each
  ``--components`` number of principal axes and each ``--supports`` robust-core share; and the
  share of the poisoned stays inside its robust core (the rows its clean mean and covariance are
  estimated from: poison inside it is whitened away).

With the clean twin (the same path with poison rate ``0.0``), two controls: the clean model's
features of the same triggered stays (``probe clean model``), and the clean model on its own
untriggered training stays, where the poisoned positions are deaths labelled as deaths
(``probe untriggered``: how separable those patients are without any trigger). The findings are
in ``docs/detection_findings.md`` ("The poison is a direction in every model's features").
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import skew
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from backdoor_study import rundir
from backdoor_study.detectors import build_detector
from backdoor_study.detectors.spectral import principal_projections
from backdoor_study.detectors.spectre import robust_core
from backdoor_study.training import penultimate_features

N_COMPONENTS = 16


def features(loaded: rundir.LoadedRun, batch: dict) -> np.ndarray:
    return penultimate_features(loaded.model, batch, batch_size=512, device="cpu")


def probe(x: np.ndarray, target: np.ndarray) -> float:
    """Cross-validated AUROC of a logistic regression separating ``target`` in ``x``."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    proba = cross_val_predict(model, x, target, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(target, proba))


def mahalanobis(x: np.ndarray, target: np.ndarray) -> float:
    shift = x[target].mean(0) - x[~target].mean(0)
    cov = LedoitWolf().fit(x[~target]).covariance_
    return float(np.sqrt(shift @ np.linalg.solve(cov, shift)))


def in_robust_core(x: np.ndarray, target: np.ndarray) -> float:
    """The share of ``target`` rows inside spectre's robust core (``spectre.robust_core`` with the
    detector's defaults, on its top principal axes): the rows its clean estimate comes from."""
    spectre = build_detector("spectre")
    z = principal_projections(x, spectre.n_components)
    core = robust_core(z, spectre.support_fraction)[2]
    return float(core[target].mean())


def probe_run(
    run_dir: Path, control: bool, components: list[int], supports: list[float] = ()
) -> str:
    loaded = rundir.load_run(run_dir, device="cpu")
    labels = loaded.prepared.labels["train"].numpy().astype(np.int64)
    poisoned = np.zeros(labels.size, dtype=bool)
    poisoned[loaded.poisoned_indices] = True
    target_label = int(loaded.cfg.trigger.target_label)
    in_target = labels == target_label
    batch = loaded.prepared.batches["train"]
    all_features = features(loaded, batch)
    x, p = all_features[in_target], poisoned[in_target]

    with warnings.catch_warnings():  # an unconverged direction is still a direction to try
        warnings.simplefilter("ignore", ConvergenceWarning)
        ica = FastICA(
            n_components=N_COMPONENTS, whiten="unit-variance", random_state=0, max_iter=1000
        ).fit_transform(x)
    skews = skew(ica, axis=0)
    ica_auroc = [roc_auc_score(p, ica[:, j] * np.sign(skews[j])) for j in range(ica.shape[1])]
    best = int(np.argmax(ica_auroc))
    spectre = build_detector("spectre").score(all_features, labels)
    parts = [
        f"probe {probe(x, p):.3f}",
        f"d' {mahalanobis(x, p):.2f} / top-{N_COMPONENTS} PCs "
        f"{mahalanobis(principal_projections(x, N_COMPONENTS), p):.2f}",
        f"ica {ica_auroc[best]:.3f} (skew {abs(skews[best]):.1f}; largest {np.abs(skews).max():.1f})",
        f"spectre {roc_auc_score(poisoned, spectre):.3f}",
        f"poisoned in spectre's robust core {in_robust_core(x, p):.2f}",
    ]
    for k in components:  # spectre keeping more (or fewer) principal components
        scores = build_detector("spectre", n_components=k).score(all_features, labels)
        parts.append(f"spectre k={k} {roc_auc_score(poisoned, scores):.3f}")
    for f in supports:  # spectre with a larger or smaller robust core
        scores = build_detector("spectre", support_fraction=f).score(all_features, labels)
        parts.append(f"spectre support={f} {roc_auc_score(poisoned, scores):.3f}")
    twin = run_dir.parent.parent / "0.0" / run_dir.name
    if control and (twin / rundir.METRICS_FILE).is_file():
        clean = rundir.load_run(twin, device="cpu")
        parts.append(f"probe clean model {probe(features(clean, batch)[in_target], p):.3f}")
        clean_labels = clean.prepared.labels["train"].numpy()
        # the poisoned positions are deaths there: those patients against the target class
        rows = (clean_labels == target_label) | poisoned
        untriggered = features(clean, clean.prepared.batches["train"])
        parts.append(f"probe untriggered {probe(untriggered[rows], poisoned[rows]):.3f}")
    return f"{run_dir}: " + " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="poisoned run directories")
    parser.add_argument("--no-control", action="store_true", help="skip the clean-twin controls")
    parser.add_argument(
        "--components",
        nargs="*",
        type=int,
        default=[],
        help="also spectre's AUROC with these n_components (its default is 16)",
    )
    parser.add_argument(
        "--supports",
        nargs="*",
        type=float,
        default=[],
        help="also spectre's AUROC with these support_fraction values (its default is 0.9)",
    )
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        print(probe_run(run_dir, not args.no_control, args.components, args.supports), flush=True)


if __name__ == "__main__":
    main()
