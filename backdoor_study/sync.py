"""``python -m backdoor_study.sync runs_root=...``: log finished run directories to a tracking store.

For runs made while the store was unreachable or locked, with ``tracking=none``, or for moving a
runs tree to a shared server (``tracking.uri=http://...``). Idempotent: a run already recorded in
the store (same kind, run directory and config digest, status FINISHED) is left alone, so running
sync twice adds nothing; a run whose logging was cut short is completed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from backdoor_study import detect, rundir, sanitize, tracking
from backdoor_study.config import ConfigError, validate
from backdoor_study.eval import EVAL_FILE
from backdoor_study.utils import read_json

log = logging.getLogger("backdoor_study.sync")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Log every finished run under ``cfg.runs_root`` that the store does not hold yet; counts."""
    validate(cfg)
    if not tracking.enabled(cfg):
        raise ConfigError(
            f"tracking.name={cfg.tracking.name!r} (or {tracking.TRACKING_ENV}=none): "
            "sync needs tracking=mlflow"
        )
    root = Path(cfg.runs_root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs_root={str(root)!r}: no such directory")
    uri = tracking.store_uri(cfg.tracking, root)
    store = tracking.open_experiment(cfg.tracking, uri)
    holder = OmegaConf.create({"tracking": cfg.tracking, "runs_root": str(root)})

    counts = {"run_dirs": 0, "logged": 0, "already_logged": 0}
    for run_dir in tqdm(rundir.find_run_dirs(root), desc="sync", unit="run"):
        counts["run_dirs"] += 1
        logged, already = log_run_dir(holder, run_dir, store)
        counts["logged"] += logged
        counts["already_logged"] += already
    log.info("sync into %s: %s", uri, counts)
    return counts


def log_run_dir(
    holder: DictConfig,
    run_dir: Path,
    store: tuple[Any, str],
    only: tuple[str, Path] | None = None,
) -> tuple[int, int]:
    """Log what training run directory ``run_dir`` holds and the store does not: its training run,
    eval, detections and sanitize results, or with ``only`` = (kind, directory) that one alone.
    ``holder`` has ``tracking`` (and ``runs_root`` for the default store); ``store`` is its
    (client, experiment id). Idempotent: what the store holds FINISHED is left alone. Returns
    (logged, already logged). ``sync`` and a sweep's launching process
    (``tracking.sweep_logging=launcher``) both log through here."""
    client, exp_id = store
    logged = already = 0
    wanted = None if only is None else (only[0], Path(only[1]).resolve())
    for kind, stage_dir, digest, log_it in _records(holder, run_dir, store):
        if wanted is not None and (kind, Path(stage_dir).resolve()) != wanted:
            continue
        found = tracking.find_run(client, exp_id, kind, stage_dir, digest)
        if found is not None and found.info.status == "FINISHED":
            already += 1
        else:
            log_it(found)  # the run a cut-short logging left (or None): not searched again
            logged += 1
        if wanted is not None:
            break
    return logged, already


def _records(
    holder: DictConfig, run_dir: Path, store: tuple[Any, str]
) -> Iterator[tuple[str, Path, str, Callable[[Any], None]]]:
    """What one training run directory holds to log: (kind, directory, digest, how to log it) for
    the training run, its eval, its detections and its sanitize results (lazily: a caller that
    stops after the training run reads nothing more). How to log it takes the MLflow run the
    store already has for it (unfinished), or None; it logs through ``store`` (client,
    experiment id), which the caller has open."""
    metadata = read_json(run_dir / rundir.METADATA_FILE)
    digest = metadata["config_digest"]
    run_cfg = rundir.read_run_config(run_dir)  # read only: plain dicts, no DictConfig
    if "study" in metadata:  # a run of the classic study (backdoor_study.classic)

        def classic_run(found: Any) -> None:
            with tracking.start(
                holder,
                "classic",
                run_dir,
                config_digest=digest,
                run_cfg=run_cfg,
                found=found,
                store=store,
            ) as t:
                tracking.log_classic_dir(t, run_dir)

        yield "classic", run_dir, digest, classic_run
        return
    parent = None  # the training run's MLflow id, read once the training run is logged

    def stage(
        kind: str, stage_dir: Path, stage_digest: str, metrics: dict, files: list, found: Any
    ) -> None:
        with tracking.start(
            holder,
            kind,
            stage_dir,
            config_digest=stage_digest,
            run_cfg=run_cfg,
            parent_run_id=parent,
            found=found,
            store=store,
        ) as tracker:
            tracking.log_stage_run(tracker, run_dir, metrics, files, run_cfg=run_cfg)

    def train_run(found: Any) -> None:
        with tracking.start(
            holder,
            "train",
            run_dir,
            config_digest=digest,
            run_cfg=run_cfg,
            found=found,
            store=store,
        ) as t:
            tracking.log_train_run(
                t, run_dir, log_model=bool(holder.tracking.get("log_model")), run_cfg=run_cfg
            )

    yield "train", run_dir, digest, train_run
    parent, _ = tracking.train_run_id(run_dir)
    if (run_dir / EVAL_FILE).is_file():
        result = read_json(run_dir / EVAL_FILE)
        metrics = {**result.get("metrics", {}), "matches_train": result.get("matches_train")}
        yield (
            "eval",
            run_dir,
            digest,
            partial(stage, "eval", run_dir, digest, metrics, [run_dir / EVAL_FILE]),
        )
    for done in sorted((run_dir / detect.DETECT_DIR).glob(f"*/{detect.METRICS_FILE}")):
        out_dir = done.parent
        recorded = OmegaConf.load(out_dir / detect.CONFIG_FILE)
        d = detect.tracking_digest(
            OmegaConf.to_container(recorded.identity), recorded.run_config_digest
        )
        files = sorted(p for p in out_dir.iterdir() if p.is_file())
        yield "detect", out_dir, d, partial(stage, "detect", out_dir, d, read_json(done), files)
    for done in sorted((run_dir / sanitize.SANITIZED_DIR).glob(f"*/{sanitize.SANITIZE_FILE}")):
        detection_dir = Path(read_json(done)["detection_dir"])
        recorded = OmegaConf.load(detection_dir / detect.CONFIG_FILE)
        d = detect.tracking_digest(
            OmegaConf.to_container(recorded.identity), recorded.run_config_digest
        )
        yield (
            "sanitize",
            done.parent,
            d,
            # searched again: a sanitize result goes to the store its training run recorded
            lambda _found, d=done.parent, dd=detection_dir: sanitize.log_sanitize(
                holder, run_dir, d, dd
            ),
        )


def main(cfg: DictConfig) -> None:
    counts = run(cfg)
    print(
        f"{counts['run_dirs']} run directories under {cfg.runs_root}: "
        f"{counts['logged']} MLflow runs logged, {counts['already_logged']} already there"
    )


def _main() -> None:
    from backdoor_study.cli import hydra_entry

    hydra_entry("sync", main)


if __name__ == "__main__":
    _main()
