"""``study=accuracy_paradox``: why accuracy misleads on imbalanced tasks.

Two imbalanced tasks: in-hospital mortality on PhysioNet 2012 set A (~14% deaths; features are
``tabular_features``, i.e. per-variable summaries of the hourly grid plus statics; skipped, with
the reason, when the files are absent), and ``paradox.table`` made deliberately imbalanced
(``paradox.positive_class`` kept at ``paradox.positive_rate`` of the rows, relabelled as the
positive class 1; the rest class 0). On each, over ``paradox.seeds`` stratified 70/30 splits,
a majority-class ``DummyClassifier`` and logistic regression (without and with balanced class
weights) are scored at the default decision rule (p >= 0.5): accuracy beside balanced accuracy,
AUPRC, recall of the positive class and the summed confusion matrix.

Run directory ``{runs_root}/accuracy_paradox/{table}_{positive_rate}/``: ``paradox.csv`` (one row
per task x model x weighting x seed), ``paradox_summary.csv``, ``paradox.json`` (skipped tasks
and why, confusion matrices), ``metrics.json`` last.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from backdoor_study import tracking
from backdoor_study.classic.core import Table, as_table, fit_and_score
from backdoor_study.classic.runner import begin, finish_run_dir, start_run_dir
from backdoor_study.config import DummyConfig, LogRegConfig, PhysioNet2012DataConfig
from backdoor_study.data import load_dataset
from backdoor_study.data.schema import ClinicalDataset, DataValidationError
from backdoor_study.data.sklearn_tables import load_table as load_sklearn_table
from backdoor_study.data.splits import holdout_split
from backdoor_study.metrics import summarize_seeds
from backdoor_study.utils import atomic_write_text, write_json

log = logging.getLogger("backdoor_study.classic")

MODELS = {"majority_class": DummyConfig, "logreg": LogRegConfig}
REPORTED = ("acc_test", "balanced_acc_test", "auprc_test", "recall_test", "precision_test")


def imbalanced(
    ds: ClinicalDataset, positive_class: int, positive_rate: float, seed: int
) -> ClinicalDataset:
    """``ds`` as a binary task: rows of ``positive_class`` (subsampled so they are
    ``positive_rate`` of the result) are class 1, every other row class 0."""
    if not 0 <= positive_class < ds.n_classes:
        raise DataValidationError(
            f"paradox.positive_class={positive_class} is invalid: expected a class index in "
            f"[0, {ds.n_classes}) for {ds.class_names}"
        )
    pos = np.flatnonzero(ds.y == positive_class)
    neg = np.flatnonzero(ds.y != positive_class)
    n_pos = max(4, int(round(positive_rate * neg.size / (1.0 - positive_rate))))
    if n_pos > pos.size:
        raise DataValidationError(
            f"paradox.positive_rate={positive_rate} needs {n_pos} rows of class "
            f"{ds.class_names[positive_class]!r}; '{ds.name}' has {pos.size}"
        )
    rng = np.random.default_rng([int(seed), 0x1B])
    keep = np.sort(np.concatenate([neg, rng.choice(pos, size=n_pos, replace=False)]))
    out = ds.subset(keep)
    out.y = (out.y == positive_class).astype(np.int64)
    out.class_names = [f"not {ds.class_names[positive_class]}", ds.class_names[positive_class]]
    out.name = f"{ds.name}_{ds.class_names[positive_class]}_{positive_rate:g}"
    out.validate()
    return out


def physionet_task(cfg: DictConfig) -> tuple[Table | None, str | None]:
    """PhysioNet 2012 set A mortality as a Table, or (None, why it is skipped)."""
    data_cfg = OmegaConf.structured(PhysioNet2012DataConfig(train_sets=["a"], test_sets=[]))
    try:
        loaded = load_dataset(data_cfg)
    except (FileNotFoundError, DataValidationError) as e:
        return None, f"PhysioNet 2012 set A unavailable: {str(e).splitlines()[0]}"
    return as_table(loaded.dataset, loaded.source), None


def score_task(table: Table, seeds: int) -> pd.DataFrame:
    """One row per model x class weighting x seed with the REPORTED metrics and the confusion
    matrix (as tn, fp, fn, tp)."""
    rows = []
    for seed in range(seeds):
        train_idx, test_idx = holdout_split(table.dataset, 0.3, seed)
        for model, schema in MODELS.items():
            # balanced weights make the majority-class model's prior an exact 0.5 tie, which
            # rounding settles either way: weighting means something for a real model only
            for weighted in (False, True) if model != "majority_class" else (False,):
                _, m = fit_and_score(
                    OmegaConf.structured(schema()),
                    table.x[train_idx],
                    table.y[train_idx],
                    table.x[test_idx],
                    table.y[test_idx],
                    n_classes=2,
                    seed=seed,
                    class_weighting=weighted,
                )
                (tn, fp), (fn, tp) = m["confusion_matrix_test"]
                rows.append(
                    {
                        "task": table.dataset.name,
                        "prevalence": float(table.y.mean()),
                        "model": model,
                        "class_weighting": weighted,
                        "seed": seed,
                        **{k: m[k] for k in REPORTED},
                        "tn": tn,
                        "fp": fp,
                        "fn": fn,
                        "tp": tp,
                    }
                )
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% CI over seeds of every REPORTED metric, confusion counts summed."""
    rows = []
    for (task, model, weighted), g in frame.groupby(
        ["task", "model", "class_weighting"], sort=False
    ):
        row: dict[str, Any] = {
            "task": task,
            "prevalence": g.prevalence.iloc[0],
            "model": model,
            "class_weighting": weighted,
        }
        for k in REPORTED:
            s = summarize_seeds(g[k].to_numpy())
            row |= {k: s["mean"], f"{k}_ci_low": s["ci_low"], f"{k}_ci_high": s["ci_high"]}
        row |= {k: int(g[k].sum()) for k in ("tn", "fp", "fn", "tp")}
        rows.append(row)
    return pd.DataFrame(rows)


def run_paradox(cfg: DictConfig) -> dict[str, Any]:
    with begin(cfg) as (run_dir, work_dir, digest, ident, skipped_run):
        if skipped_run is not None:
            return skipped_run
        with tracking.start(cfg, "classic", run_dir, config_digest=digest) as tracker:
            started = time.time()
            p = cfg.paradox
            tasks = [
                as_table(
                    imbalanced(
                        load_sklearn_table(str(p.table)),
                        int(p.positive_class),
                        float(p.positive_rate),
                        0,
                    )
                )
            ]
            skipped: dict[str, str] = {}
            if p.physionet:
                table, why = physionet_task(cfg)
                if table is None:
                    skipped["physionet2012"] = str(why)
                    log.warning("accuracy paradox: %s", why)
                else:
                    tasks.append(table)
            frame = pd.concat([score_task(t, int(p.seeds)) for t in tasks], ignore_index=True)
            summary = summarize(frame)
            metadata = start_run_dir(
                cfg, work_dir, digest, ident, {"tasks": [t.dataset.name for t in tasks]}
            )
            atomic_write_text(work_dir / "paradox.csv", frame.to_csv(index=False))
            atomic_write_text(work_dir / "paradox_summary.csv", summary.to_csv(index=False))
            write_json(work_dir / "paradox.json", {"skipped": skipped})
            metrics: dict[str, Any] = {"skipped_tasks": skipped}
            for row in summary.itertuples():
                tag = f"{row.task}/{row.model}{'_weighted' if row.class_weighting else ''}"
                for k in REPORTED:
                    metrics[f"{tag}/{k}"] = float(getattr(row, k))
            finish_run_dir(work_dir, metadata, metrics, started)
            tracker.log_final({k.replace("/", "."): v for k, v in metrics.items()})
            tracker.log_artifacts([work_dir / "paradox.csv", work_dir / "paradox_summary.csv"])
        return metrics
