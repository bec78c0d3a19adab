"""``python -m backdoor_study.detect``: score a finished run's training stays for poison.

A thin Hydra entry point around :func:`run`, which tests call directly with a composed config.
``detect`` reads only the run directory (:func:`backdoor_study.rundir.load_run` rebuilds the
training inputs exactly as trained on, poisoned stays included) and writes, under
``{run_dir}/detect/{detector}/``:

- ``scores.npy``: one score per training stay (higher = more suspicious), in training-split order
- ``flagged_indices.npy``: flagged positions into the training split (the indexing of
  ``poisoned_indices.npy``)
- ``detect_config.yaml``: what was run (the detection identity and its digest)
- ``scores.png`` (score distributions, poisoned vs clean, per class) and, for ``saliency``,
  ``attribution_map.png`` (the class-average attribution over variables x hours)
- ``detection_metrics.json``, written last: its presence marks a completed detection

The same detection again is skipped. A detector config other than the schema defaults goes to its
own directory ``{detector}-{digest[:8]}``; a directory holding a different detection (the run
retrained, or the defaults changed) is refused unless ``overwrite=true``. Examples::

    python -m backdoor_study.detect run_dir=runs/mlp/rare_value/0.05/seed_1 detector=spectre
    python -m backdoor_study.detect runs_root=runs/demo detector=spectral
    python -m backdoor_study.detect -m run_dir=A,B detector=spectral,spectre
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from backdoor_study import rundir, tracking
from backdoor_study.config import DETECTOR_SCHEMAS, DetectConfig, validate
from backdoor_study.utils import (
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    sha256_json,
    write_json,
)

log = logging.getLogger("backdoor_study.detect")

DETECT_DIR = "detect"
SCORES_FILE = "scores.npy"
FLAGGED_FILE = "flagged_indices.npy"
METRICS_FILE = "detection_metrics.json"
CONFIG_FILE = "detect_config.yaml"
SCORES_FIGURE = "scores.png"
ATTRIBUTION_FIGURE = "attribution_map.png"
# Where a detector's input comes from; every other detector reads penultimate() features.
INPUT_INPUTS = "inputs"  # the preprocessed model inputs, flattened (data-level, no model)
INPUT_ATTRIBUTIONS = "attributions"  # Captum attributions of the model
DETECTOR_INPUTS = {"isolation_forest": INPUT_INPUTS, "saliency": INPUT_ATTRIBUTIONS}
# Path components of run directories that runs_root mode does not detect on: detections
# themselves, sanitized retrains (detect them by run_dir) and explicit clean references.
NOT_TRAIN_RUNS = (DETECT_DIR, "sanitized", "clean_reference")


class DetectError(RuntimeError):
    """A detection could not be run or would overwrite another one."""


# --------------------------------------------------------------------------------------- identity
def detection_identity(cfg: DictConfig) -> dict[str, Any]:
    """What decides a detection's result: the detector and its parameters, the flag budget and
    the weights scored, the classes flagged in (only when not 'all', so detections made before
    ``flag_classes`` existed keep their identity). Not: run_dir/runs_root, device, batch_size,
    overwrite, progress."""
    identity = {
        "detector": OmegaConf.to_container(cfg.detector, resolve=True),
        "expected_rate": cfg.expected_rate,
        "clean_run_rate": float(cfg.clean_run_rate),
        "checkpoint": cfg.checkpoint,
    }
    classes = flag_classes(cfg)
    if classes is not None:
        identity["flag_classes"] = classes
    return identity


def flag_classes(cfg: DictConfig) -> list[int] | None:
    """The sorted class labels ``cfg.flag_classes`` restricts flagging to; None for 'all'."""
    value = cfg.get("flag_classes", "all")
    if value == "all":
        return None
    return sorted({int(c) for c in value})


def _default_identity(name: str) -> dict[str, Any]:
    defaults = DetectConfig.__dataclass_fields__
    return {
        "detector": OmegaConf.to_container(OmegaConf.structured(DETECTOR_SCHEMAS[name])),
        "expected_rate": defaults["expected_rate"].default,
        "clean_run_rate": defaults["clean_run_rate"].default,
        "checkpoint": None,
    }


def detection_dir(run_dir: Path, cfg: DictConfig) -> Path:
    """``{run_dir}/detect/{detector}``, or ``{detector}-{digest[:8]}`` for a non-default config."""
    name = str(cfg.detector.name)
    identity = detection_identity(cfg)
    if identity == _default_identity(name):
        return run_dir / DETECT_DIR / name
    return run_dir / DETECT_DIR / f"{name}-{sha256_json(identity)[:8]}"


# --------------------------------------------------------------------------------------- entry
def run(cfg: DictConfig) -> dict[str, Any] | list[dict[str, Any]]:
    """Detect on ``cfg.run_dir`` (-> its metrics), or on every completed train run under
    ``cfg.runs_root`` (-> a list of them)."""
    validate(cfg)
    if cfg.runs_root is not None:
        return detect_all(cfg, Path(cfg.runs_root))
    return detect_run(cfg, Path(cfg.run_dir))


def completed_runs(runs_root: Path) -> list[Path]:
    """Every completed train run under ``runs_root`` (``rundir.find_run_dirs``: no tracking-store
    copies, no staged overwrites), except detections, sanitized retrains and explicit clean
    references."""
    if not runs_root.is_dir():
        raise DetectError(f"runs_root={str(runs_root)!r} does not exist or is not a directory")
    return [
        run_dir
        for run_dir in rundir.find_run_dirs(runs_root)
        if not any(p in NOT_TRAIN_RUNS for p in run_dir.relative_to(runs_root).parts)
    ]


def detect_all(cfg: DictConfig, runs_root: Path) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    runs = completed_runs(runs_root)
    if not runs:
        raise DetectError(f"runs_root={str(runs_root)!r} holds no completed train run")
    results, failed = [], []
    for run_dir in tqdm(runs, desc=f"detect {cfg.detector.name}", disable=not cfg.progress):
        try:
            results.append(detect_run(cfg, run_dir))
        except Exception as e:  # one damaged run must not stop the rest; all are reported
            log.error("%s: %s: %s", run_dir, type(e).__name__, e)
            failed.append(f"{run_dir} ({type(e).__name__}: {e})")
    if failed:
        raise DetectError(
            f"{len(failed)} of {len(runs)} runs failed (the other {len(results)} were written): "
            + "; ".join(failed)
        )
    return results


def detect_run(
    cfg: DictConfig, run_dir: Path, load: Callable[[], rundir.LoadedRun] | None = None
) -> dict[str, Any]:
    """Score, flag and measure one run; skip when this detection is already complete.

    ``load``: how to get the loaded run when it is needed (default ``rundir.load_run`` with
    ``cfg.checkpoint`` and ``cfg.device``); a caller running several detectors on one run passes
    a cached loader, so the run's data is rebuilt once.
    """
    if not run_dir.is_dir():
        raise rundir.RunDirError(f"run_dir={str(run_dir)!r} does not exist or is not a directory")
    out_dir = detection_dir(run_dir, cfg)
    identity = detection_identity(cfg)
    with rundir.lock(run_dir, purpose=f"detect {cfg.detector.name}"):
        run_digest = _run_digest(run_dir)
        if _check_out_dir(cfg, out_dir, identity, run_digest) == "skip":
            log.info("detection %s already complete: skipped", out_dir)
            return {**read_json(out_dir / METRICS_FILE), "skipped": True}
        if load is None:
            loaded = rundir.load_run(run_dir, checkpoint=cfg.checkpoint, device=cfg.device)
        else:
            loaded = load()
        parent, recorded_uri = tracking.train_run_id(run_dir)
        with tracking.start(
            cfg,
            "detect",
            out_dir,
            config_digest=tracking_digest(identity, run_digest),
            run_cfg=loaded.cfg,
            parent_run_id=parent,
            recorded_uri=recorded_uri,
        ) as tracker:
            metrics = _detect(cfg, loaded, out_dir, identity, run_digest)
            tracking.log_stage_run(
                tracker, run_dir, metrics, sorted(p for p in out_dir.iterdir() if p.is_file())
            )
        return metrics


def tracking_digest(identity: dict[str, Any], run_digest: str | None) -> str:
    """What identifies a detection (or the sanitize built on it) in the tracking store: the
    detection identity and the config digest of the run it scored."""
    return sha256_json({"detection": identity, "run_config_digest": run_digest})


def _run_digest(run_dir: Path) -> str | None:
    meta = run_dir / rundir.METADATA_FILE
    return read_json(meta).get("config_digest") if meta.is_file() else None


def _check_out_dir(
    cfg: DictConfig, out_dir: Path, identity: dict[str, Any], run_digest: str | None
) -> str | None:
    """'skip' when ``out_dir`` holds this detection of this run; refuse another one."""
    if not (out_dir / METRICS_FILE).is_file():
        return None  # nothing there, or an interrupted detection: written over
    recorded = OmegaConf.to_container(OmegaConf.load(out_dir / CONFIG_FILE))
    same_run = recorded.get("run_config_digest") == run_digest
    if same_run and recorded.get("identity") == identity:
        return "skip"
    if not cfg.overwrite:
        diff = rundir.differing_keys(recorded.get("identity", {}), identity)
        if not same_run:
            diff.append("run_config_digest (the run was retrained since)")
        raise DetectError(
            f"{out_dir} holds a different detection (differs in: {', '.join(diff)}); "
            "pass overwrite=true to replace it"
        )
    log.warning("overwrite=true: replacing the detection in %s", out_dir)
    (out_dir / METRICS_FILE).unlink()
    return None


def _detect(
    cfg: DictConfig,
    loaded: rundir.LoadedRun,
    out_dir: Path,
    identity: dict[str, Any],
    run_digest: str | None,
) -> dict[str, Any]:
    from backdoor_study.detectors import build_detector
    from backdoor_study.metrics import detection_metrics

    run_dir = loaded.run_dir
    params = OmegaConf.to_container(cfg.detector, resolve=True)
    name = params.pop("name")
    detector = build_detector(name, **params)
    labels = loaded.prepared.labels["train"].numpy().astype(np.int64)
    n = labels.size
    is_poisoned = np.zeros(n, dtype=bool)
    is_poisoned[loaded.poisoned_indices] = True
    run_cfg = loaded.cfg
    poison_rate = float(run_cfg.poison_rate)
    expected_rate = _resolve_rate(cfg, poison_rate)
    target = (
        int(run_cfg.trigger.target_label)
        if run_cfg.attack.name == "backdoor" and run_cfg.trigger.name != "none"
        else None
    )

    classes = flag_classes(cfg)
    if classes is not None:  # checked before scoring, which can take seconds (saliency)
        present = sorted(int(c) for c in np.unique(labels))
        missing = [c for c in classes if c not in present]
        if missing:
            raise DetectError(
                f"flag_classes={classes} names class(es) {missing} that no training stay of "
                f"{run_dir} has; valid: 'all' or a list of {present}"
            )

    t0 = time.perf_counter()
    scores, attribution_map = _score(cfg, detector, name, loaded, labels)
    flagged = np.asarray(detector.flag(scores, labels, expected_rate), dtype=bool)
    if classes is not None:
        flagged &= np.isin(labels, classes)
    wall_s = time.perf_counter() - t0
    if scores.shape != (n,):
        raise DetectError(f"detector {name} returned scores of shape {scores.shape}, not ({n},)")

    metrics = detection_metrics(is_poisoned, scores, flagged, labels, target)
    metrics.update(
        {
            "detector": name,
            "run_dir": str(run_dir),
            "detection_dir": str(out_dir),
            "expected_rate": expected_rate,
            "flag_budget": min(1.0, float(cfg.detector.eps_multiplier) * expected_rate),
            "flag_classes": "all" if classes is None else classes,
            "poison_rate": poison_rate,
            "target_label": target,
            "wall_s": wall_s,
            "seconds_per_1000": 1000.0 * wall_s / max(n, 1),
        }
    )
    report = getattr(detector, "class_report_", None)  # activation clustering's evidence
    if report:
        metrics["class_report"] = {str(c): r for c, r in report.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_npy(out_dir / SCORES_FILE, scores.astype(np.float64))
    _write_npy(out_dir / FLAGGED_FILE, np.flatnonzero(flagged).astype(np.int64))
    record = {
        "identity": identity,
        "identity_digest": sha256_json(identity),
        "run_dir": str(run_dir),
        "run_config_digest": run_digest,
        "checkpoint": str(loaded.checkpoint),
        "features": DETECTOR_INPUTS.get(name, "penultimate"),
    }
    atomic_write_text(out_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(record)))
    plot_scores(out_dir / SCORES_FIGURE, scores, labels, is_poisoned, flagged, name)
    if attribution_map is not None:
        plot_attribution_map(
            out_dir / ATTRIBUTION_FIGURE, attribution_map, list(loaded.prepared.dataset.variables)
        )
    write_json(out_dir / METRICS_FILE, metrics)  # last: marks the detection complete
    log.info(
        "%s on %s: AUROC %.3f, flagged %d of %d",
        name,
        run_dir,
        metrics.get("auroc", float("nan")),
        flagged.sum(),
        n,
    )
    return metrics


def _resolve_rate(cfg: DictConfig, poison_rate: float) -> float:
    if cfg.expected_rate != "auto":
        return float(cfg.expected_rate)
    return poison_rate if poison_rate > 0 else float(cfg.clean_run_rate)


def _score(
    cfg: DictConfig, detector: Any, name: str, loaded: Any, labels: np.ndarray
) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
    """(N,) scores and, for attribution detectors, the class-average attribution maps
    ({class: (T, F)})."""
    from backdoor_study.training import penultimate_features

    batch = loaded.prepared.batches["train"]
    kind = DETECTOR_INPUTS.get(name, "penultimate")
    if kind == INPUT_INPUTS:
        features = flatten_inputs(batch)
        return np.asarray(detector.score(features, labels), dtype=np.float64), None
    if kind == INPUT_ATTRIBUTIONS:
        on_device = {k: v.to(loaded.device) for k, v in batch.items()}
        attributions = detector.attributions(loaded.model, on_device, labels)
        scores = np.asarray(detector.score(attributions, labels), dtype=np.float64)
        return scores, detector.class_attribution_maps(attributions, labels)
    features = penultimate_features(
        loaded.model, batch, batch_size=int(cfg.batch_size), device=loaded.device
    )
    return np.asarray(detector.score(features, labels), dtype=np.float64), None


def flatten_inputs(batch: dict[str, Any]) -> np.ndarray:
    """(N, D) float64: the preprocessed grid, its mask and the statics of each stay, flattened."""
    n = next(iter(batch.values())).shape[0]
    parts = [batch[k].reshape(n, -1).double().numpy() for k in ("x", "mask", "static_num")]
    parts.append(batch["static_cat"].reshape(n, -1).double().numpy())
    return np.concatenate(parts, axis=1)


def _write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------- figures
def _figure():  # noqa: ANN202 - matplotlib types
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(
    path: Path,
    scores: np.ndarray,
    labels: np.ndarray,
    is_poisoned: np.ndarray,
    flagged: np.ndarray,
    detector: str,
) -> None:
    """Per class: histograms of the scores of clean and poisoned stays, and the flag cut-off."""
    plt = _figure()
    classes = np.unique(labels)
    fig, axes = plt.subplots(1, classes.size, figsize=(5 * classes.size, 3.6), squeeze=False)
    for ax, c in zip(axes[0], classes):
        in_c = labels == c
        s = scores[in_c]
        bins = np.histogram_bin_edges(s, bins=50)
        ax.hist(s[~is_poisoned[in_c]], bins=bins, alpha=0.6, label="clean", density=True)
        if is_poisoned[in_c].any():
            ax.hist(s[is_poisoned[in_c]], bins=bins, alpha=0.6, label="poisoned", density=True)
        if flagged[in_c].any():
            ax.axvline(s[flagged[in_c]].min(), color="k", ls="--", lw=1, label="flag cut-off")
        ax.set_title(f"class {c}: {in_c.sum()} stays, {is_poisoned[in_c].sum()} poisoned")
        ax.set_xlabel(f"{detector} score")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_attribution_map(path: Path, maps: dict[int, np.ndarray], variables: list[str]) -> None:
    """Per class: the class-average share of attribution, variables (rows) x hours (columns)."""
    plt = _figure()
    fig, axes = plt.subplots(
        1, len(maps), figsize=(6 * len(maps), 0.25 * len(variables) + 1.5), squeeze=False
    )
    for ax, (c, share) in zip(axes[0], sorted(maps.items())):
        im = ax.imshow(share.T, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(variables)), variables, fontsize=7)
        ax.set_xlabel("hour")
        ax.set_title(f"class {c}: mean share of |attribution|")
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------- CLI
def _print(result: dict[str, Any] | list[dict[str, Any]]) -> None:
    for m in result if isinstance(result, list) else [result]:
        state = "skipped (already complete)" if m.get("skipped") else "done"
        print(
            f"{state}: {m['detection_dir']} AUROC={m.get('auroc', float('nan')):.4f} "
            f"recall={m.get('recall', float('nan')):.4f} flagged={m['n_flagged']}/{m['n_scored']} "
            f"({m['wall_s']:.1f} s)"
        )


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("detect", lambda cfg: _print(run(cfg)), user_errors=(DetectError,))


if __name__ == "__main__":
    _main()
