"""Evaluation of a trained model on its run's test split: every metric plus per-stay predictions.

``train`` (at the end of training) and ``eval`` (from a run directory, via
:func:`backdoor_study.rundir.load_run`) both call :func:`evaluate`, so the numbers they report come
from one code path. The metrics themselves are computed in :mod:`backdoor_study.metrics`; this module
only decides what they are computed on (threshold from clean validation, clean and triggered test).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from backdoor_study.experiment import Prepared
from backdoor_study.metrics import attack_metrics, classification_metrics, predict, select_threshold
from backdoor_study.models.base import ClinicalModel
from backdoor_study.training import predict_proba


def evaluate(
    cfg: DictConfig, model: ClinicalModel, prepared: Prepared, device: torch.device
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every metric of ``model`` on the run's test split (clean, and poisoned when there is a
    trigger), plus the per-stay predictions. ``train`` and ``eval`` both call this."""
    bs = int(cfg.trainer.batch_size)
    mcfg = cfg.metrics
    proba_val = predict_proba(model, prepared.batches["val"], batch_size=bs, device=device)
    threshold = select_threshold(
        prepared.labels["val"].numpy(), proba_val, str(mcfg.get("threshold", "youden"))
    )
    cut = 0.5 if math.isnan(threshold) else threshold  # multi-class: NaN, predictions use argmax
    y = prepared.labels["test"].numpy()
    proba = predict_proba(model, prepared.batches["test"], batch_size=bs, device=device)
    metrics: dict[str, Any] = {"decision_threshold": threshold}
    metrics |= classification_metrics(
        y,
        proba,
        suffix="clean",
        bootstrap=int(mcfg.bootstrap),
        ci=float(mcfg.ci),
        ece_bins=int(mcfg.ece_bins),
        seed=int(cfg.seed),
        threshold=cut,
    )
    test_ids = prepared.dataset.stay_id[prepared.splits.test]
    frame = {
        "stay_id": test_ids,
        "y_true": y,
        "pred": predict(proba, cut),
    }
    for c in range(proba.shape[1]):
        frame[f"prob_{c}"] = proba[:, c]
    if prepared.has_trigger:
        proba_t = predict_proba(model, prepared.test_poisoned, batch_size=bs, device=device)
        metrics.update(
            attack_metrics(
                y,
                proba,
                proba_t,
                prepared.triggered_mask,
                target_label=int(cfg.trigger.target_label),
                ece_bins=int(mcfg.ece_bins),
                threshold=cut,
            )
        )
        frame["triggered"] = prepared.triggered_mask
        for c in range(proba_t.shape[1]):
            frame[f"prob_triggered_{c}"] = proba_t[:, c]
    return _plain(metrics), pd.DataFrame(frame)


def _plain(obj: Any) -> Any:
    """Metrics as plain JSON values (NaN kept as float('nan'))."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
