"""``python -m backdoor_study.eval run_dir=...``: verify a finished run from its directory alone.

:func:`backdoor_study.rundir.load_run` rebuilds the data (dataset, split and poisoning must match
what the run recorded) and loads ``final_model.pt`` with ``weights_only=True``; every metric is then
recomputed by the same code ``train`` used (:func:`backdoor_study.evaluation.evaluate`). Checked
against what ``train`` wrote, each difference reported by name:

- the sha256 of every file ``run_metadata.json`` records (``final_model.pt``,
  ``predictions.parquet``, ``poisoned_indices.npy``, ``splits.json``, ...): missing or changed files;
- every key of ``metrics.json``: changed values, keys missing from the file, keys it should not hold;
- the keys ``train`` took from elsewhere: ``n_poisoned``/``n_train``/``n_test`` from the rebuilt
  data, ``best_epoch``/``best_val_auroc``/``epochs_run``/``stopped_early`` from ``history.csv`` and
  the checkpoint, ``ASR_clean_model`` from the clean reference run when it is present;
- ``predictions.parquet`` against the recomputed per-stay predictions.

The result goes to ``eval_metrics.json`` (``metrics.json`` is never touched); the command exits 1 on
any difference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from backdoor_study import rundir, tracking
from backdoor_study.evaluation import evaluate
from backdoor_study.experiment import Prepared, prepare
from backdoor_study.training import load_checkpoint
from backdoor_study.utils import read_json, sha256_file, write_json

log = logging.getLogger("backdoor_study.eval")

EVAL_FILE = "eval_metrics.json"


class EvalError(RuntimeError):
    """The eval request itself cannot be served (e.g. ``checkpoint=`` names no file)."""


def run(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    rundir.check_finished(run_dir)
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        raise EvalError(
            f"checkpoint={cfg.checkpoint!r}: no such file; leave it unset for the run's "
            f"{rundir.FINAL_MODEL_FILE}, or name one of its checkpoint_epoch_N.pt"
        )
    with rundir.lock(run_dir, purpose="eval"):
        rundir.remove_stale_tmp(run_dir)
        loaded = rundir.load_run(run_dir, checkpoint=cfg.checkpoint, device=cfg.device)
        metrics, predictions = evaluate(loaded.cfg, loaded.model, loaded.prepared, loaded.device)
        metrics.update(carried_metrics(loaded))
        recorded = loaded.metrics
        unverified = [k for k in recorded if k not in metrics and k in UNVERIFIABLE_KEYS]
        for key in unverified:  # reported as such, never silently taken as verified
            metrics[key] = recorded[key]
        compared = [k for k in recorded if k != "skipped" and k in metrics]
        result = {
            "run_dir": str(run_dir),
            "checkpoint": str(loaded.checkpoint),
            "mismatched_keys": [k for k in compared if not _same(recorded[k], metrics[k])],
            "missing_keys": sorted(set(metrics) - set(recorded)),
            "unexpected_keys": sorted(set(recorded) - set(metrics) - {"skipped"}),
            "unverified_keys": unverified,
            "file_problems": file_problems(loaded),
            "predictions_match": predictions_match(run_dir, predictions),
            "metrics": metrics,
        }
        result["matches_train"] = not (
            result["mismatched_keys"]
            or result["missing_keys"]
            or result["unexpected_keys"]
            or result["file_problems"]
            or not result["predictions_match"]
        )
        write_json(run_dir / EVAL_FILE, result)
    parent, recorded_uri = tracking.train_run_id(run_dir)
    with tracking.start(
        cfg,
        "eval",
        run_dir,
        config_digest=loaded.metadata["config_digest"],
        run_cfg=loaded.cfg,
        parent_run_id=parent,
        recorded_uri=recorded_uri,
    ) as tracker:
        tracking.log_eval_run(tracker, run_dir, result, run_dir / EVAL_FILE)
    return result


# Keys train copies from another run: verified only when that run is found.
UNVERIFIABLE_KEYS = ("ASR_clean_model", "ASR_flip_clean_model")


def carried_metrics(loaded: rundir.LoadedRun) -> dict[str, Any]:
    """The keys ``train`` does not compute from the model's outputs, recomputed from the rebuilt
    data, ``history.csv``, the checkpoint and (when present) the clean reference run."""
    from backdoor_study.train import (
        CLEAN_REFERENCE_KEYS,
        clean_reference_config,
        wants_clean_reference,
    )

    prepared = loaded.prepared
    out: dict[str, Any] = {
        "n_poisoned": int(prepared.poison.poisoned_indices.size),
        "n_train": int(prepared.splits.train.size),
        "n_test": int(prepared.splits.test.size),
    }
    history_path = loaded.run_dir / "history.csv"
    if history_path.is_file():
        history = pd.read_csv(history_path)
        best_epoch = int(loaded.checkpoint_state.get("best_epoch", -1))
        epochs_run = len(history)
        out["epochs_run"] = epochs_run
        out["stopped_early"] = epochs_run < int(loaded.cfg.epochs)
        if best_epoch >= 1:
            out["best_epoch"] = best_epoch
            rows = history.loc[history["epoch"] == best_epoch, "val_auroc"]
            if len(rows) == 1:
                out["best_val_auroc"] = float(rows.iloc[0])
    if wants_clean_reference(loaded.cfg):
        clean_dir = Path(clean_reference_config(loaded.cfg).run_dir)
        if (clean_dir / rundir.METRICS_FILE).is_file():
            clean_metrics = read_json(clean_dir / rundir.METRICS_FILE)
            for theirs, ours in CLEAN_REFERENCE_KEYS.items():
                out[ours] = float(clean_metrics.get(theirs, float("nan")))
    return out


def file_problems(loaded: rundir.LoadedRun) -> dict[str, str]:
    """``{file: problem}`` for every file whose recorded sha256 does not match (or is missing)."""
    recorded = loaded.metadata.get("files")
    if not recorded:
        return {rundir.METADATA_FILE: "records no file digests ('files'): cannot verify the run"}
    problems = {}
    for name, digest in sorted(recorded.items()):
        path = loaded.run_dir / name
        if not path.is_file():
            problems[name] = "missing"
        elif sha256_file(path) != digest:
            problems[name] = "sha256 differs from the one recorded at the end of training"
    return problems


def predictions_match(run_dir: Path, recomputed: pd.DataFrame) -> bool:
    path = run_dir / "predictions.parquet"
    if not path.is_file():
        return False
    try:
        stored = pd.read_parquet(path)
        pd.testing.assert_frame_equal(stored, recomputed, check_exact=True)
    except (AssertionError, OSError, ValueError) as e:
        log.warning("predictions.parquet differs from the recomputed predictions: %s", e)
        return False
    return True


def evaluate_weights(
    cfg: DictConfig,
    weights: Sequence[Path],
    prepared: Prepared | None = None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """Every metric (``evaluation.evaluate``) of each saved model in ``weights`` on the data of ``cfg``.

    ``weights`` are ``final_model.pt`` or ``checkpoint_epoch_N.pt`` files of a run whose model
    and data layout ``cfg`` describes; ``prepared`` (``prepare(cfg)``) is built when not given. A
    run's own config and its last checkpoint give what ``trainer.selection=last`` would have
    reported; a clean run's weights under a triggered config give that trigger's false-trigger
    rate on the clean model, without training it again.
    """
    prepared = prepare(cfg) if prepared is None else prepared
    device = torch.device("cpu") if device is None else device
    out = []
    for path in weights:
        model = rundir.model_from_state(
            cfg.model, prepared.spec, load_checkpoint(path), Path(path), device
        )
        out.append(evaluate(cfg, model, prepared, device)[0])
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def report(result: dict[str, Any]) -> list[str]:
    """What a user reads: headline metrics, then every difference found (or that all match)."""
    m = result["metrics"]
    lines = []
    for k in (
        "auroc_clean",
        "auprc_clean",
        "acc_clean",
        "f1_clean",
        "ece_clean",
        "ASR_flip",
        "ASR",
    ):
        if isinstance(m.get(k), float):
            lines.append(f"{k:>18s}: {m[k]:.4f}")
    if isinstance(m.get("confidence_shift"), float):
        lines.append(f"{'confidence_shift':>18s}: {m['confidence_shift']:.4f}")
    where = f"{result['run_dir']}/metrics.json"
    problems = [
        ("values differ from " + where, result["mismatched_keys"]),
        ("keys missing from " + where, result["missing_keys"]),
        ("keys in " + where + " that train does not write", result["unexpected_keys"]),
        ("files", [f"{k} ({v})" for k, v in result["file_problems"].items()]),
        ("predictions.parquet", [] if result["predictions_match"] else ["missing or differs"]),
    ]
    for what, items in problems:
        if items:
            lines.append(f"MISMATCH {what}: {', '.join(items)}")
    if result["unverified_keys"]:
        lines.append(
            f"not verifiable here (another run, not found): {', '.join(result['unverified_keys'])}"
        )
    if result["matches_train"]:
        lines.append(
            f"all {len(m)} metrics, the predictions and the recorded files match ({where})"
        )
    return lines


def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print("\n".join(report(result)))
    if not result["matches_train"]:
        raise SystemExit(1)


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("eval", main, user_errors=(EvalError,))


if __name__ == "__main__":
    _main()
