"""``python -m backdoor_study.sanitize``: remove the stays a detector flags and retrain.

Runs (or reuses) the detection of ``detect`` on ``run_dir``, then retrains the run's own config
without the flagged training stays into ``{run_dir}/sanitized/{detection}/`` (the detection
directory's name, e.g. ``spectre``) with ``train``'s own machinery: the retrain's config is the
run's resolved config plus ``sanitize.exclude_file`` / ``sanitize.exclude_digest``, which
``experiment.prepare`` applies after poisoning, so the sanitized run is an ordinary run directory
that ``eval`` / ``detect`` / ``load_run`` read like any other. The two runs are linked both ways in
``run_metadata.json``, and ``sanitize.json`` (in the sanitized run) compares ASR, ``ASR_flip``,
clean AUROC and the clean model's false-trigger rate before and after. Example::

    python -m backdoor_study.sanitize run_dir=runs/mlp/rare_value/0.05/seed_1 detector=spectre
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from backdoor_study import detect, rundir, tracking
from backdoor_study.config import validate
from backdoor_study.utils import read_json, sha256_indices, write_json

log = logging.getLogger("backdoor_study.sanitize")

SANITIZED_DIR = "sanitized"
SANITIZE_FILE = "sanitize.json"
# Compared before and after, where the run's metrics.json has them (ASR_flip: attack table, #6).
COMPARED_KEYS = (
    "ASR",
    "ASR_flip",
    "ASR_baseline",
    "confidence_shift",
    "auroc_clean",
    "auprc_clean",
    "n_train",
    "n_poisoned",
)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Detect, retrain without the flagged stays, compare; returns what ``sanitize.json`` holds."""
    from backdoor_study import train

    validate(cfg)
    run_dir = Path(cfg.run_dir)
    detection = detect.detect_run(cfg, run_dir)  # raises for a missing / unfinished run
    detection_dir = Path(detection["detection_dir"])
    flagged_file = detection_dir / detect.FLAGGED_FILE
    excluded = np.load(flagged_file, allow_pickle=False)
    sanitized_dir = run_dir / SANITIZED_DIR / detection_dir.name

    train_cfg = sanitized_config(cfg, run_dir, sanitized_dir, flagged_file, excluded)
    after = train.run(train_cfg)
    before = read_json(run_dir / rundir.METRICS_FILE)
    result = {
        "run_dir": str(run_dir),
        "sanitized_run_dir": str(sanitized_dir),
        "detector": str(cfg.detector.name),
        "detection_dir": str(detection_dir),
        "n_excluded": int(excluded.size),
        "n_poisoned_excluded": int(
            np.isin(excluded, np.load(run_dir / "poisoned_indices.npy")).sum()
        ),
        "detection": {
            k: detection.get(k) for k in ("auroc", "recall", "precision", "flag_rate", "wall_s")
        },
        "before": _compared(before),
        "after": _compared(after),
        "clean_model": clean_model_summary(run_dir, before),
        "skipped": bool(detection.get("skipped")) and bool(after.get("skipped")),
    }
    for when in ("before", "after"):
        result[when]["ASR_clean_model"] = result["clean_model"]["ASR"]
    with rundir.lock(sanitized_dir, purpose="sanitize"):
        write_json(sanitized_dir / SANITIZE_FILE, result)
        _link(
            sanitized_dir,
            "sanitized_from",
            {"run_dir": str(run_dir), "detection_dir": str(detection_dir)},
        )
    with rundir.lock(run_dir, purpose="sanitize"):
        _link(run_dir, "sanitized_runs", {detection_dir.name: str(sanitized_dir)}, merge=True)
    if not result["skipped"]:  # a skipped sanitize adds no MLflow run
        log_sanitize(cfg, run_dir, sanitized_dir, detection_dir)
    return result


def log_sanitize(cfg: DictConfig, run_dir: Path, sanitized_dir: Path, detection_dir: Path) -> None:
    """Track a sanitize result (sanitize.json) as a child of the training run it cleaned.
    (The sanitized retrain is itself tracked by ``train.run`` as a training run.)"""
    recorded = OmegaConf.load(detection_dir / detect.CONFIG_FILE)
    parent, recorded_uri = tracking.train_run_id(run_dir)
    with tracking.start(
        cfg,
        "sanitize",
        sanitized_dir,
        config_digest=detect.tracking_digest(
            OmegaConf.to_container(recorded.identity), recorded.run_config_digest
        ),
        run_cfg=rundir.load_run_config(run_dir),
        parent_run_id=parent,
        recorded_uri=recorded_uri,
    ) as tracker:
        result_file = sanitized_dir / SANITIZE_FILE
        metrics = read_json(result_file)
        numeric = {k: metrics[k] for k in ("detection", "before", "after", "clean_model")}
        numeric |= {k: metrics[k] for k in ("n_excluded", "n_poisoned_excluded")}
        tracking.log_stage_run(tracker, run_dir, numeric, [result_file])


def sanitized_config(
    cfg: DictConfig, run_dir: Path, sanitized_dir: Path, flagged_file: Path, excluded: np.ndarray
) -> DictConfig:
    """The run's own resolved config, into ``sanitized_dir``, without the ``excluded`` positions.

    Only keys outside the config identity change besides ``sanitize`` (run_dir, resume,
    overwrite, device, progress) and ``clean_reference`` is off: the clean model is the original
    run's, since excluding stays from a clean run is not the comparison. ``resume=auto``: an
    interrupted retrain continues from its last checkpoint when sanitize is run again (train's
    bitwise-exact resume, which refuses a checkpoint written by another config).
    """
    run_cfg = rundir.load_run_config(run_dir)
    container = OmegaConf.to_container(run_cfg, resolve=True)
    container.update(
        run_dir=str(sanitized_dir),
        resume="auto",
        overwrite=False,
        clean_reference=False,
        device=str(OmegaConf.to_container(cfg, enum_to_str=True)["device"]),
        sanitize={
            "exclude_file": str(flagged_file),
            "exclude_digest": sha256_indices(excluded),
            "n_excluded": int(excluded.size),
            "source_run": str(run_dir),
            "detector": str(cfg.detector.name),
        },
    )
    container.setdefault("trainer", {})["progress"] = bool(cfg.progress)
    out = OmegaConf.create(container)
    if cfg.train_overrides:
        out = OmegaConf.merge(out, OmegaConf.from_dotlist(list(cfg.train_overrides)))
    return out


def _compared(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in COMPARED_KEYS if k in metrics}


def clean_model_summary(run_dir: Path, before: dict[str, Any]) -> dict[str, Any]:
    """The same trigger on the model trained without poison: its false-trigger rate (``ASR``,
    which a sanitized model's ASR should come down to; the poisoned run's ``before`` metrics
    record it when the run had a clean reference), its clean AUROC and its run directory."""
    clean = _clean_model_metrics(run_dir)
    return {
        "ASR": before.get("ASR_clean_model", clean.get("ASR")),
        "auroc_clean": clean.get("auroc_clean"),
        "run_dir": clean.get("run_dir"),
    }


def _clean_model_metrics(run_dir: Path) -> dict[str, Any]:
    """The metrics of the run's clean reference (same config at poison rate 0), if it exists."""
    from backdoor_study.train import clean_reference_config

    unresolved = run_dir / ".hydra" / "config.yaml"
    if not unresolved.is_file():
        return {}
    try:
        clean_dir = Path(str(clean_reference_config(OmegaConf.load(unresolved)).run_dir))
    except Exception as e:  # an interpolation the recorded config cannot resolve here
        log.warning("cannot locate the clean reference of %s: %s", run_dir, e)
        return {}
    path = clean_dir / rundir.METRICS_FILE
    return {**read_json(path), "run_dir": str(clean_dir)} if path.is_file() else {}


def _link(run_dir: Path, key: str, value: dict[str, Any], merge: bool = False) -> None:
    path = run_dir / rundir.METADATA_FILE
    meta = read_json(path)
    meta[key] = {**meta.get(key, {}), **value} if merge else value
    write_json(path, meta)


def _print(result: dict[str, Any]) -> None:
    state = "skipped (already complete)" if result["skipped"] else "done"
    print(
        f"{state}: {result['sanitized_run_dir']}: excluded {result['n_excluded']} stays "
        f"({result['n_poisoned_excluded']} poisoned)"
    )
    for key in ("ASR", "ASR_flip", "auroc_clean"):
        if key in result["before"]:
            print(
                f"{key:>12s}: {result['before'][key]:.4f} -> {result['after'].get(key, float('nan')):.4f}"
            )
    if result["clean_model"]["ASR"] is not None:
        print(f"{'clean model ASR':>12s}: {result['clean_model']['ASR']:.4f}")


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("sanitize", lambda cfg: _print(run(cfg)), user_errors=(detect.DetectError,))


if __name__ == "__main__":
    _main()
