"""``python -m backdoor_study.sync runs_root=...``: log finished run directories to a tracking store.

For runs made while the store was unreachable or locked, with ``tracking=none``, or for moving a
runs tree to a shared server (``tracking.uri=http://...``). Idempotent: a run already recorded in
the store (same kind, run directory and config digest, status FINISHED) is left alone, so running
sync twice adds nothing; a run whose logging was cut short is completed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from backdoor_study import rundir, tracking
from backdoor_study.config import CONF_DIR, ConfigError, validate
from backdoor_study.utils import read_json

log = logging.getLogger("backdoor_study.sync")
EVAL_FILE = "eval_metrics.json"


def find_run_dirs(runs_root: Path) -> list[Path]:
    """Every completed training run directory under ``runs_root`` (metrics.json written last)."""
    return sorted(
        p.parent
        for p in runs_root.rglob(rundir.METRICS_FILE)
        if (p.parent / rundir.RESOLVED_CONFIG_FILE).exists()
        and (p.parent / rundir.METADATA_FILE).exists()
    )


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
    client, exp_id = tracking.open_experiment(cfg.tracking, uri)
    holder = OmegaConf.create({"tracking": cfg.tracking, "runs_root": str(root)})

    counts = {"run_dirs": 0, "logged": 0, "already_logged": 0}
    for run_dir in tqdm(find_run_dirs(root), desc="sync", unit="run"):
        counts["run_dirs"] += 1
        digest = read_json(run_dir / rundir.METADATA_FILE)["config_digest"]
        run_cfg = OmegaConf.load(run_dir / rundir.RESOLVED_CONFIG_FILE)
        if _logged(client, exp_id, "train", run_dir, digest):
            counts["already_logged"] += 1
        else:
            with tracking.start(
                holder, "train", run_dir, config_digest=digest, run_cfg=run_cfg
            ) as tracker:
                tracking.log_train_run(
                    tracker, run_dir, log_model=bool(cfg.tracking.get("log_model"))
                )
            counts["logged"] += 1
        if (run_dir / EVAL_FILE).exists() and not _logged(client, exp_id, "eval", run_dir, digest):
            parent, _ = tracking.train_run_id(run_dir)
            with tracking.start(
                holder, "eval", run_dir, config_digest=digest, run_cfg=run_cfg, parent_run_id=parent
            ) as tracker:
                tracking.log_eval_run(
                    tracker, run_dir, read_json(run_dir / EVAL_FILE), run_dir / EVAL_FILE
                )
            counts["logged"] += 1
    log.info("sync into %s: %s", uri, counts)
    return counts


def _logged(client: Any, exp_id: str, kind: str, run_dir: Path, digest: str) -> bool:
    found = tracking.find_run(client, exp_id, kind, run_dir, digest)
    return found is not None and found.info.status == "FINISHED"


def _main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sync")
    def main(cfg: DictConfig) -> None:
        counts = run(cfg)
        print(
            f"{counts['run_dirs']} run directories under {cfg.runs_root}: "
            f"{counts['logged']} MLflow runs logged, {counts['already_logged']} already there"
        )

    main()


if __name__ == "__main__":
    _main()
