"""Is the poison a direction in a run's penultimate features, and does spectre find it?

    python scripts/feature_probes.py RUN_DIR [RUN_DIR ...] [--no-control] [--components K ...]
        [--supports F ...] [--saliency]

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
  estimated from: poison inside it is whitened away);
- ``spectre oracle``: spectre's scores (its principal axes, QUE with its ``alpha`` and with 4, the
  paper's) whitened with the mean and covariance of the *clean* stays alone, which no defender
  knows: the best any robust estimate of them could do.

With the clean twin (the same path with poison rate ``0.0``), two controls: the clean model's
features of the same triggered stays (``probe clean model``), and the clean model on its own
untriggered training stays, where the poisoned positions are deaths labelled as deaths
(``probe untriggered``: how separable those patients are without any trigger).

``--saliency`` (needs the clean twin's untriggered stays): the saliency detector's AUROC with its
defaults, each poisoned stay's *trigger effect* (the poisoned model's log-odds of the target on
the triggered stay minus on the same stay untriggered: how far the trigger moves that decision;
its median is printed) and the Spearman correlation between the trigger effect and the saliency
score over the poisoned stays: whether the stays saliency misses are the ones whose decision the
trigger moves least. The findings are in ``docs/detection_findings.md`` ("The poison is a
direction in every model's features", "Why each detector succeeds or fails where it does").
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import cholesky, solve_triangular
from scipy.stats import skew, spearmanr
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
from backdoor_study.detectors.spectre import que_scores, robust_core
from backdoor_study.training import penultimate_features, predict_proba

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


def oracle_spectre(x: np.ndarray, target: np.ndarray, alpha: float) -> float:
    """AUROC of spectre's QUE scores on its principal axes of ``x`` (the target class's rows),
    whitened with the mean and covariance of the clean rows (``~target``) instead of a robust
    estimate. Cholesky whitening: QUE scores do not change under a rotation of the whitened rows."""
    z = principal_projections(x, build_detector("spectre").n_components)
    clean = z[~target]
    factor = cholesky(np.cov(clean, rowvar=False), lower=True)
    white = solve_triangular(factor, (z - clean.mean(axis=0)).T, lower=True).T
    return float(roc_auc_score(target, que_scores(white, alpha)))


def target_log_odds(model: torch.nn.Module, batch: dict, target_label: int) -> np.ndarray:
    """(N,) the model's log-odds of ``target_label``: log p(target) - log p(any other), from
    ``training.predict_proba`` (for two classes, the difference of the two logits)."""
    proba = predict_proba(model, batch, batch_size=1024, device="cpu")
    return np.log(proba[:, target_label]) - np.log(np.delete(proba, target_label, axis=1).sum(1))


def saliency_probe(
    loaded: rundir.LoadedRun, clean: rundir.LoadedRun, labels: np.ndarray, poisoned: np.ndarray
) -> list[str]:
    """Saliency's AUROC, the poisoned stays' median trigger effect and its Spearman correlation
    with their saliency scores (see the module docstring)."""
    target_label = int(loaded.cfg.trigger.target_label)
    batch = loaded.prepared.batches["train"]
    detector = build_detector("saliency")
    with warnings.catch_warnings():  # Captum's notes on inputs that need no gradient
        warnings.simplefilter("ignore", UserWarning)
        scores = detector.score(detector.attributions(loaded.model, batch, labels), labels)
    effect = (
        target_log_odds(loaded.model, batch, target_label)
        - target_log_odds(loaded.model, clean.prepared.batches["train"], target_label)
    )[poisoned]
    return [
        f"saliency {roc_auc_score(poisoned, scores):.3f}",
        f"trigger effect median {np.median(effect):.2f}",
        f"spearman(trigger effect, saliency) {spearmanr(effect, scores[poisoned])[0]:.2f}",
    ]


def probe_run(
    run_dir: Path,
    control: bool,
    components: list[int],
    supports: list[float] = (),
    saliency: bool = False,
) -> str:
    twin = run_dir.parent.parent / "0.0" / run_dir.name
    has_twin = (twin / rundir.METRICS_FILE).is_file()
    if saliency and not has_twin:
        raise SystemExit(f"--saliency needs the clean twin {twin} (trained, with metrics.json)")
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
        f"spectre oracle {oracle_spectre(x, p, build_detector('spectre').alpha):.3f}",
        f"spectre oracle alpha=4 {oracle_spectre(x, p, 4.0):.3f}",
    ]
    for k in components:  # spectre keeping more (or fewer) principal components
        scores = build_detector("spectre", n_components=k).score(all_features, labels)
        parts.append(f"spectre k={k} {roc_auc_score(poisoned, scores):.3f}")
    for f in supports:  # spectre with a larger or smaller robust core
        scores = build_detector("spectre", support_fraction=f).score(all_features, labels)
        parts.append(f"spectre support={f} {roc_auc_score(poisoned, scores):.3f}")
    clean = rundir.load_run(twin, device="cpu") if has_twin and (control or saliency) else None
    clean_labels = None if clean is None else clean.prepared.labels["train"].numpy()
    if saliency:
        if not np.array_equal(clean_labels[~poisoned], labels[~poisoned]):
            raise SystemExit(f"{twin}'s training stays are not {run_dir}'s: cannot pair them")
        parts += saliency_probe(loaded, clean, labels, poisoned)
    if control and clean is not None:
        parts.append(f"probe clean model {probe(features(clean, batch)[in_target], p):.3f}")
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
    parser.add_argument(
        "--saliency",
        action="store_true",
        help="also saliency's AUROC and how it follows each poisoned stay's trigger effect",
    )
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        line = probe_run(
            run_dir, not args.no_control, args.components, args.supports, args.saliency
        )
        print(line, flush=True)


if __name__ == "__main__":
    main()
