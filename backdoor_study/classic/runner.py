"""One classic run: config -> poisoned table -> (sanitised) fit -> run directory.

Run directory ``{runs_root}/{data}/{model}/{attack}/{poison_rate}/seed_{seed}[/{mitigation}]``,
with train's rules (under ``rundir.lock``; ``rundir.refuse_other_config``: a completed run of the
same config is skipped, a different config refused unless ``overwrite=true``, which builds the new
run beside the old one and swaps it in only once complete; nothing is written before the config is
valid and the directory checked; every file written atomically, ``metrics.json`` last):

- ``.hydra/``, ``config_resolved.yaml``, ``run_metadata.json`` (config identity and digest, data
  digest, split digest, versions, git commit, timings, status)
- ``split.json`` (train / test stay ids), ``poisoned_indices.npy`` (positions into the training
  split, as train writes them), ``poison.json``
- ``flagged_indices.npy`` (positions into the training split; with a mitigation)
- ``confusion_matrix.png``, ``model/`` (the fitted pipeline in MLflow's sklearn format, with a
  signature; ``save_model=true``)
- ``metrics.json``
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from backdoor_study import rundir, tracking
from backdoor_study.classic.core import as_table, fit_and_score, load_table, sanitise
from backdoor_study.data.splits import holdout_split
from backdoor_study.poison import poison_dataset
from backdoor_study.utils import atomic_write_bytes, read_json, sha256_json, write_json

log = logging.getLogger("backdoor_study.classic")


# config nodes that only other studies read: not part of a single run's identity
STUDY_ONLY_KEYS = {
    "single": ("curve", "paradox", "save_model"),
    "data_quantity_quality": ("paradox", "poison_rate", "mitigation", "seed", "save_model"),
    "accuracy_paradox": (
        "curve",
        "poison_rate",
        "mitigation",
        "attack",
        "seed",
        "save_model",
        "model",
        "data",
    ),
}


def identity(cfg: DictConfig) -> dict[str, Any]:
    """``rundir.config_identity`` minus the keys this study does not read."""
    ident = rundir.config_identity(cfg)
    for key in STUDY_ONLY_KEYS[str(cfg.study)]:
        ident.pop(key, None)
    return ident


@contextlib.contextmanager
def begin(
    cfg: DictConfig,
) -> Iterator[tuple[Path, Path, str, dict[str, Any], dict[str, Any] | None]]:
    """Hold the run directory's lock and check it: yields (run_dir, work_dir, digest, identity,
    metrics of a completed same-config run to skip with, or None to run). Write into
    ``work_dir``: the run directory itself, or (``overwrite=true`` over another config) a staging
    directory swapped in for the old run when the ``with`` block ends with a complete run."""
    run_dir = Path(cfg.run_dir)
    ident = identity(cfg)
    digest = sha256_json(ident)
    with rundir.opened(run_dir, config_digest=digest, purpose="classic"):
        state = rundir.inspect(run_dir)
        replace = rundir.refuse_other_config(run_dir, state, digest, ident, bool(cfg.overwrite))
        if not replace and state.complete and state.recorded_digest == digest:
            log.info("run %s already complete with this config: skipped", run_dir)
            metrics = read_json(run_dir / rundir.METRICS_FILE)
            yield run_dir, run_dir, digest, ident, {**metrics, "skipped": True}
            return
        work_dir = rundir.fresh_staging_dir(run_dir) if replace else run_dir
        yield run_dir, work_dir, digest, ident, None
        if replace and (work_dir / rundir.METRICS_FILE).is_file():
            rundir.replace_with(run_dir, work_dir)


def start_run_dir(
    cfg: DictConfig, run_dir: Path, digest: str, ident: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    """Create the directory with its config files and a ``running`` metadata record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, cfg)
    metadata = {
        "status": "running",
        "study": str(cfg.study),
        "config_digest": digest,
        "config_identity": ident,
        "data": data,
        "environment": _environment(),
        "timings": {},
    }
    write_json(run_dir / rundir.METADATA_FILE, metadata)
    return metadata


@functools.cache
def _environment() -> dict[str, Any]:
    """Versions and git commit: one lookup per process (a sweep's jobs share it)."""
    return rundir.environment()


def finish_run_dir(
    run_dir: Path, metadata: dict[str, Any], metrics: dict[str, Any], started: float
) -> None:
    metadata["status"] = "complete"
    metadata["timings"]["total_s"] = time.time() - started
    write_json(run_dir / rundir.METADATA_FILE, metadata)
    write_json(run_dir / rundir.METRICS_FILE, metrics)  # last: marks the run complete


def run_single(cfg: DictConfig) -> dict[str, Any]:
    """One fit at ``poison_rate`` with ``mitigation``; returns (and writes) its metrics."""
    with begin(cfg) as (run_dir, work_dir, digest, ident, skipped):
        if skipped is not None:
            return skipped
        with tracking.start(cfg, "classic", run_dir, config_digest=digest) as tracker:
            return _fit_into(cfg, work_dir, digest, ident, tracker)


def _fit_into(
    cfg: DictConfig,
    run_dir: Path,
    digest: str,
    ident: dict[str, Any],
    tracker: tracking.Tracker,
) -> dict[str, Any]:
    started = time.time()
    seed = int(cfg.seed)
    table = load_table(cfg.data)
    ds = table.dataset
    train_idx, test_idx = holdout_split(ds, float(cfg.test_size), seed)
    result = poison_dataset(
        ds,
        train_idx,
        attack_cfg=cfg.attack,
        trigger_cfg=None,
        poison_rate=float(cfg.poison_rate),
        seed=seed,
    )
    poisoned = as_table(result.dataset, table.source)
    x_train, y_train = poisoned.x[train_idx], poisoned.y[train_idx]
    keep = np.ones(train_idx.size, dtype=bool)
    detection: dict[str, Any] = {}
    if cfg.mitigation.name != "none":
        flagged, detection = sanitise(
            cfg.mitigation, x_train, y_train, result.poisoned_indices, seed
        )
        keep = ~flagged
    pipeline, metrics = fit_and_score(
        cfg.model,
        x_train[keep],
        y_train[keep],
        poisoned.x[test_idx],
        poisoned.y[test_idx],
        n_classes=ds.n_classes,
        seed=seed,
        class_weighting=bool(cfg.class_weighting),
    )
    fit_s = time.time() - started
    metrics |= detection
    metrics |= {
        "n_train": int(train_idx.size),
        "n_test": int(test_idx.size),
        "n_poisoned": int(result.poisoned_indices.size),
        "n_removed": int((~keep).sum()),
        "n_poisoned_removed": int((~keep)[result.poisoned_indices].sum()),
        "n_fitted": int(keep.sum()),
    }

    metadata = start_run_dir(
        cfg,
        run_dir,
        digest,
        ident,
        {
            "name": ds.name,
            "digest": ds.digest(),
            "n_stays": ds.n_stays,
            "source": table.source,
            "poisoned_digest": result.dataset.digest(),
        },
    )
    split = {
        "seed": seed,
        "test_size": float(cfg.test_size),
        "stay_ids": {
            "train": ds.stay_id[train_idx].tolist(),
            "test": ds.stay_id[test_idx].tolist(),
        },
    }
    split["split_digest"] = sha256_json(split["stay_ids"])
    metadata["split_digest"] = split["split_digest"]
    write_json(run_dir / "split.json", split)
    _write_npy(run_dir / "poisoned_indices.npy", result.poisoned_indices)
    write_json(run_dir / "poison.json", result.details)
    if cfg.mitigation.name != "none":
        _write_npy(run_dir / "flagged_indices.npy", np.flatnonzero(~keep))
    write_confusion_matrix(
        run_dir / "confusion_matrix.png",
        metrics["confusion_matrix_test"],
        ds.class_names,
        title=f"{ds.name} {cfg.model.name} {cfg.attack.name} {float(cfg.poison_rate):g}"
        f" seed {seed} ({cfg.mitigation.name})",
    )
    if cfg.save_model:
        tracking.save_sklearn_model(run_dir / "model", pipeline, x_train[keep])
    metadata["timings"]["fit_and_score_s"] = fit_s
    finish_run_dir(run_dir, metadata, metrics, started)
    params = tracking.classic_params(cfg, metadata, metrics)
    tracking.log_classic_run(tracker, run_dir, params, pipeline, x_train[keep])
    log.info("run complete: %s acc_test=%.4f", run_dir, metrics["acc_test"])
    return metrics


def _write_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, dtype=np.int64))
    atomic_write_bytes(path, buf.getvalue())


def write_confusion_matrix(
    path: Path, matrix: list[list[int]], class_names: list[str], title: str
) -> None:
    """The confusion matrix (rows true, columns predicted) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names).plot(
        ax=ax, colorbar=False
    )
    ax.set_title(title, fontsize=8)
    if len(class_names) > 3:
        ax.tick_params(axis="x", labelrotation=45)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)  # one draw: no bbox_inches="tight" (the sweep's cost)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
