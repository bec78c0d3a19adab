"""``python -m backdoor_study.train``: train one model on (possibly poisoned) data into a run directory.

A thin Hydra entry point around :func:`run`, which tests call directly with a composed config.
Examples::

    python -m backdoor_study.train model=lstm trigger=rare_value poison_rate=0.01 seed=42 epochs=10
    python -m backdoor_study.train model=mlp data=physionet2012 epochs=20
    python -m backdoor_study.train model=tcn resume=runs/tcn/none/0.0/seed_42/checkpoint_epoch_3.pt
    python -m backdoor_study.train -m model=mlp,lstm trigger=rare_value poison_rate=0.0,0.01 seed=1,2,3
"""

from __future__ import annotations

import csv
import io
import logging
import logging.handlers
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig, OmegaConf

from backdoor_study import rundir, sweep, tracking
from backdoor_study.config import validate
from backdoor_study.evaluation import evaluate
from backdoor_study.experiment import Prepared, prepare
from backdoor_study.models.base import ClinicalModel, build_model
from backdoor_study.training import (
    Trainer,
    class_weights_balanced,
    load_checkpoint,
    resolve_device,
    seed_everything,
    write_plain_state,
)
from backdoor_study.utils import (
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    sha256_json,
    write_json,
)

log = logging.getLogger("backdoor_study.train")

FINAL_MODEL_FILE = rundir.FINAL_MODEL_FILE
__all__ = ["FINAL_MODEL_FILE", "clean_reference_config", "evaluate", "run", "summary_row"]
SUMMARY_KEYS = (
    "model",
    "trigger",
    "attack",
    "poison_rate",
    "poison_source",
    "seed",
    "data",
    "epochs",
)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train per ``cfg`` into ``cfg.run_dir`` and return the metrics (also written to metrics.json).

    A completed run with the same config is skipped (its metrics are returned); a run directory
    holding a different config is refused unless ``overwrite=true``. The whole check-train-write
    span holds the run directory's lock: a second process with the same config waits, then skips;
    one with a different config is refused.
    """
    validate(cfg)
    run_dir = Path(cfg.run_dir)
    identity = rundir.config_identity(cfg)
    digest = sha256_json(identity)
    with rundir.opened(run_dir, config_digest=digest, purpose="train"):
        plan = _check_run_dir(cfg, run_dir, digest, identity)
        if plan == "skip":
            log.info("run %s already complete with this config: skipped", run_dir)
            metrics = read_json(run_dir / rundir.METRICS_FILE)
            # in a sweep whose launching process logs, it logs the run if an earlier sweep left
            # it unlogged (an MLflow run already there is kept: no second one)
            sweep.record_finished(cfg, "train", run_dir)
            return {**metrics, "skipped": True}

        with (
            _RunLog() as run_log,
            sweep.tracked(cfg, "train", run_dir, config_digest=digest) as tracker,
        ):
            metrics = _train(cfg, run_dir, digest, identity, plan, run_log)
            tracking.log_train_run(tracker, run_dir, log_model=bool(cfg.tracking.get("log_model")))
        return metrics


def _train(
    cfg: DictConfig,
    run_dir: Path,
    digest: str,
    identity: dict[str, Any],
    plan: _Plan,
    run_log: _RunLog,
) -> dict[str, Any]:
    """Train into ``run_dir``, or with ``plan.replace`` into a staging directory beside it that
    replaces it only once the new run is complete (the old run survives any failure)."""
    started = time.time()
    device = resolve_device(cfg.device)
    seed_everything(int(cfg.seed))
    prepared = prepare(cfg)
    resume_from = plan.resume_from
    if resume_from is not None:
        _check_resume_checkpoint(resume_from, digest, prepared.data_digest)
    work_dir = rundir.fresh_staging_dir(run_dir) if plan.replace else run_dir
    metadata = _start_run_dir(cfg, work_dir, digest, identity, prepared, device, resume_from)
    run_log.attach(work_dir / "train.log")

    seed_everything(int(cfg.seed))  # model init does not depend on how much RNG the data stage used
    model = build_model(cfg.model, prepared.spec)
    trainer = Trainer(
        model,
        _factory(cfg.optimizer),
        _factory(cfg.scheduler),
        epochs=int(cfg.epochs),
        batch_size=int(cfg.trainer.batch_size),
        seed=int(cfg.seed),
        device=device,
        checkpoint_dir=work_dir,
        keep_last=cfg.trainer.keep_last,
        grad_clip=cfg.trainer.grad_clip,
        class_weights=(
            class_weights_balanced(prepared.labels["train"], prepared.spec.n_classes)
            if cfg.trainer.class_weighting
            else None
        ),
        early_stopping_patience=cfg.trainer.early_stopping_patience,
        selection=str(cfg.trainer.get("selection", "best")),
        progress=bool(cfg.trainer.progress),
        metadata={"config_digest": digest, "data_digest": prepared.data_digest},
    )
    t_fit = time.perf_counter()
    fit = trainer.fit(
        prepared.batches["train"],
        prepared.labels["train"],
        prepared.batches["val"],
        prepared.labels["val"],
        resume_from=resume_from,
    )
    train_s = time.perf_counter() - t_fit

    _save_final_model(work_dir / FINAL_MODEL_FILE, model, digest, prepared, fit.best_epoch)
    t_eval = time.perf_counter()
    metrics, predictions = evaluate(cfg, model, prepared, device)
    metrics.update(
        {
            "best_epoch": fit.best_epoch,
            "best_val_auroc": fit.best_val_auroc,
            "epochs_run": fit.epochs_run,
            "stopped_early": fit.stopped_early,
            "n_poisoned": int(prepared.poison.poisoned_indices.size),
            "n_train": int(prepared.splits.train.size),
            "n_test": int(prepared.splits.test.size),
        }
    )
    if wants_clean_reference(cfg):
        metrics.update(_clean_reference_asr(cfg))
    eval_s = time.perf_counter() - t_eval

    _write_history(work_dir / "history.csv", fit.history)
    _write_predictions(work_dir / "predictions.parquet", predictions)
    metadata["timings"].update(
        {
            **prepared.timings,
            "train_s": train_s,
            "evaluate_s": eval_s,
            "total_s": time.time() - started,
        }
    )
    metadata["status"] = "complete"
    metadata["best_epoch"] = fit.best_epoch
    metadata["files"] = rundir.file_digests(work_dir)  # eval checks each
    write_json(work_dir / rundir.METADATA_FILE, metadata)
    _write_summary(work_dir / "experiment_summary.csv", cfg, metrics, prepared, run_dir)
    write_json(work_dir / rundir.METRICS_FILE, metrics)  # last: marks the run complete
    if plan.replace:
        rundir.replace_with(run_dir, work_dir)
    log.info("run complete: %s", run_dir)
    return metrics


class _RunLog:
    """The run's ``train.log``: records are held in memory until the run directory has been
    checked and started, so a refused run never creates a directory just to hold its log.

    Only the records of the thread that runs the run: with the basic launcher a sweep's jobs run
    in its launching process, where the sweep's logger (``sweep.SweepLogger``: a thread, or the
    relay of a forked process's lines) logs other runs."""

    def __init__(self) -> None:
        self.memory = logging.handlers.MemoryHandler(
            capacity=100_000, flushLevel=logging.CRITICAL + 1
        )
        self.file: logging.Handler | None = None
        self.thread = threading.get_ident()
        self.memory.addFilter(self._ours)

    def _ours(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread

    def __enter__(self) -> _RunLog:
        logging.getLogger().addHandler(self.memory)
        return self

    def attach(self, path: Path) -> None:
        self.file = logging.FileHandler(path, mode="a")
        self.file.addFilter(self._ours)
        self.file.setFormatter(
            logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        )
        self.memory.setTarget(self.file)
        self.memory.flush()
        root = logging.getLogger()
        root.removeHandler(self.memory)
        root.addHandler(self.file)

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        for handler in (self.memory, self.file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()


# --------------------------------------------------------------------------------------- run dir
@dataclass(frozen=True)
class _Plan:
    """What a run does with its directory: continue from ``resume_from`` (None: from scratch);
    with ``replace``, build the run beside the old one and swap it in at the end."""

    resume_from: Path | None = None
    replace: bool = False


def _check_run_dir(
    cfg: DictConfig, run_dir: Path, digest: str, identity: dict[str, Any]
) -> _Plan | str:
    """Decide what to do with what ``run_dir`` holds: 'skip' or a :class:`_Plan`.

    Nothing is deleted here: ``overwrite=true`` plans a replacement that happens only after the
    new run is complete, so data that fails to load or any later error leaves the old run intact.
    """
    state = rundir.inspect(run_dir)
    overwrite = bool(cfg.overwrite)
    resume = cfg.resume
    same = state.recorded_digest == digest
    if rundir.refuse_other_config(run_dir, state, digest, identity, overwrite):
        return _Plan(replace=True)
    if state.complete and same:
        return "skip"
    if resume in (None, ""):
        if state.checkpoints:
            if overwrite:
                return _Plan(replace=True)
            last = max(state.checkpoints)
            raise rundir.RunDirError(
                f"{run_dir} holds an unfinished run of this config (last checkpoint: epoch {last}); "
                "pass resume=auto to continue it, or overwrite=true to start over"
            )
        return _Plan()
    if resume == "auto":
        if not state.checkpoints:
            log.info("resume=auto: no checkpoint in %s, starting from scratch", run_dir)
            return _Plan()
        return _Plan(resume_from=state.checkpoints[max(state.checkpoints)])
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume!r}: no such checkpoint file")
    _check_resume_checkpoint(path, digest, None)  # the config now; the data once it is loaded
    return _Plan(resume_from=path)


def _check_resume_checkpoint(path: Path, digest: str, data_digest: str | None) -> None:
    """Refuse to continue from a checkpoint written by another config or on other data: every
    path that resumes (``resume=auto`` and ``resume=<path>``) comes through here."""
    recorded = load_checkpoint(path).get("metadata", {})
    written_by = recorded.get("config_digest")
    if written_by != digest:
        raise rundir.RunDirError(
            f"resume: {path} was written by a different config (digest {str(written_by)[:12]} vs "
            f"{digest[:12]}); resume with the config it was trained with (see the run's "
            "config_resolved.yaml), or pass overwrite=true to start over"
        )
    on_data = recorded.get("data_digest")
    if data_digest is not None and on_data != data_digest:
        raise rundir.RunDirError(
            f"resume: {path} was trained on other data (data digest {str(on_data)[:12]} vs "
            f"{data_digest[:12]} now): the data changed since; pass overwrite=true to start over"
        )


def _start_run_dir(
    cfg: DictConfig,
    run_dir: Path,
    digest: str,
    identity: dict[str, Any],
    prepared: Prepared,
    device: torch.device,
    resume_from: str | None,
) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, cfg)
    write_json(run_dir / "splits.json", prepared.splits.to_json(prepared.dataset))
    buf = io.BytesIO()
    np.save(buf, prepared.poison.poisoned_indices.astype(np.int64))
    atomic_write_bytes(run_dir / "poisoned_indices.npy", buf.getvalue())
    write_json(run_dir / "poison.json", prepared.poison.details)
    write_json(run_dir / "preprocessing.json", prepared.preprocessor.state_dict())
    metadata = {
        "status": "running",
        "config_digest": digest,
        "config_identity": identity,
        "data": {
            "name": prepared.dataset.name,
            "digest": prepared.data_digest,
            "n_stays": prepared.dataset.n_stays,
            "source": prepared.loaded.source,
        },
        "split_digest": prepared.splits.digest(prepared.dataset),
        "device": str(device),
        "resumed_from": resume_from,
        "environment": rundir.environment(),
        "timings": {},
    }
    write_json(run_dir / rundir.METADATA_FILE, metadata)
    return metadata


def _factory(node: Any) -> Any:
    """A `_partial_` optimizer/scheduler node -> a callable; an empty node (scheduler=none) -> None."""
    from hydra.utils import instantiate

    if node is None or "_target_" not in node:
        return None
    return instantiate(node)


def _save_final_model(
    path: Path, model: ClinicalModel, digest: str, prepared: Prepared, best_epoch: int
) -> None:
    spec = prepared.spec
    write_plain_state(
        path,
        {
            "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "best_epoch": int(best_epoch),
            "config_digest": digest,
            "data_digest": prepared.data_digest,
            "spec": {
                "n_steps": spec.n_steps,
                "n_features": spec.n_features,
                "n_static_num": spec.n_static_num,
                "static_cat_cardinalities": list(spec.static_cat_cardinalities),
                "n_classes": spec.n_classes,
            },
        },
    )


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def _write_predictions(path: Path, frame: pd.DataFrame) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def summary_row(
    cfg: DictConfig, metrics: dict[str, Any], run_dir: str, data_digest: str
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_dir": run_dir,
        "model": cfg.model.name,
        "trigger": cfg.trigger.name,
        "attack": cfg.attack.name,
        "poison_rate": float(cfg.poison_rate),
        "poison_source": str(OmegaConf.to_container(cfg.poison, enum_to_str=True)["source"]),
        "seed": int(cfg.seed),
        "data": cfg.data.name,
        "data_digest": data_digest,
        "epochs": int(cfg.epochs),
    }
    row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, bool)) or v is None})
    return row


def _write_summary(
    path: Path, cfg: DictConfig, metrics: dict[str, Any], prepared: Prepared, run_dir: Path
) -> None:
    row = summary_row(cfg, metrics, str(run_dir), prepared.data_digest)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    atomic_write_text(path, out.getvalue())


# --------------------------------------------------------------------------------------- clean reference
def wants_clean_reference(cfg: DictConfig) -> bool:
    return (
        bool(cfg.clean_reference)
        and cfg.attack.name == "backdoor"
        and cfg.trigger.name != "none"
        and float(cfg.poison_rate) > 0
    )


def clean_reference_config(cfg: DictConfig) -> DictConfig:
    """The same config at poison_rate 0: the clean model whose ASR is the false-trigger rate."""
    clean = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    clean.poison_rate = 0.0
    # resume=auto continues a clean reference killed mid-training too; a checkpoint path is the
    # poisoned run's, not the clean one's
    clean.resume = "auto" if cfg.resume == "auto" else None
    clean.overwrite = False
    if "hydra" in clean:
        del clean["hydra"]
    if str(OmegaConf.select(clean, "run_dir")) == str(cfg.run_dir):  # an explicit run_dir override
        clean.run_dir = str(Path(cfg.run_dir) / "clean_reference")
    return clean


#: attack metric of the clean reference -> the key it is reported under in the poisoned run
CLEAN_REFERENCE_KEYS = {"ASR": "ASR_clean_model", "ASR_flip": "ASR_flip_clean_model"}


def _clean_reference_asr(cfg: DictConfig) -> dict[str, float]:
    """The clean model's ASR (false-trigger rate) and ASR_flip, under CLEAN_REFERENCE_KEYS."""
    clean = clean_reference_config(cfg)
    log.info("clean reference for ASR_clean_model: %s", clean.run_dir)
    metrics = run(clean)
    return {
        ours: float(metrics.get(theirs, float("nan")))
        for theirs, ours in CLEAN_REFERENCE_KEYS.items()
    }


# --------------------------------------------------------------------------------------- CLI
def main(cfg: DictConfig) -> float | None:
    metrics = sweep.run_job(cfg, run)
    if metrics is None:  # a failed job of a sweep, reported at the sweep's end
        return None
    keys = [
        "auroc_clean",
        "auprc_clean",
        "acc_clean",
        "ASR_flip",
        "ASR",
        "ASR_baseline",
        "ASR_clean_model",
        "ASR_flip_clean_model",
        "confidence_shift",
    ]
    shown = {k: round(metrics[k], 4) for k in keys if isinstance(metrics.get(k), float)}
    status = "skipped (already complete)" if metrics.get("skipped") else "done"
    print(f"{status}: {cfg.run_dir} {shown}")
    return metrics.get("best_val_auroc")  # the objective of hydra/sweeper=optuna


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("train", main)


if __name__ == "__main__":
    _main()
