"""Hydra multirun sweeps: what happens once per sweep, and what every job of a sweep does.

``SweepCallback`` is registered in ``conf/train.yaml`` (``hydra.callbacks``) and runs in the
launching process, whichever launcher runs the jobs (basic, joblib, submitit local or SLURM):

- ``on_multirun_start`` creates the tracking store and experiment before any job starts (parallel
  workers racing to create a fresh SQLite store break it), and names the sweep so its jobs can
  report failures to it;
- ``on_multirun_end`` lists the jobs that failed (run directory and first error line) and exits
  non-zero when there were any.

:func:`run_job` wraps the task of every job: under multirun it resumes unfinished runs
(``resume=auto`` unless set) and turns an exception into a failure record instead of letting
Hydra stop the sweep at the first failed job. Outside multirun it only calls the task.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from backdoor_study import tracking
from backdoor_study.utils import read_json, write_json

log = logging.getLogger("backdoor_study.sweep")

SWEEP_ENV = "BACKDOOR_STUDY_SWEEP_ID"
FAILURES_DIR = ".sweep_failures"


def in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under @hydra.main
        return False


def _failures_dir(sweep_dir: str | Path, sweep_id: str) -> Path:
    return Path(sweep_dir) / FAILURES_DIR / sweep_id


def run_job(cfg: DictConfig, task: Callable[[DictConfig], Any]) -> Any:
    """Run one job's ``task(cfg)``. Under multirun: ``resume=auto`` by default, and a failure is
    recorded for the sweep's final report (and returned as None) rather than raised."""
    if not in_multirun():
        return task(cfg)
    if cfg.get("resume", "unset") is None:
        cfg.resume = "auto"  # re-running a sweep continues its unfinished runs
    try:
        return task(cfg)
    except Exception as e:  # noqa: BLE001 - one failed job must not stop the sweep
        hc = HydraConfig.get()
        run_dir = OmegaConf.select(cfg, "run_dir", throw_on_resolution_failure=False)
        record = {
            "job": int(hc.job.num),
            "overrides": list(hc.overrides.task),
            "run_dir": str(run_dir) if run_dir is not None else None,
            "error": f"{type(e).__name__}: {first_line(e)}",
        }
        sweep_id = os.environ.get(SWEEP_ENV, "unnamed")
        write_json(_failures_dir(hc.sweep.dir, sweep_id) / f"job_{hc.job.num}.json", record)
        log.error("job %s failed: %s (%s)", hc.job.num, record["error"], record["run_dir"])
        return None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class SweepCallback(Callback):
    """Once per sweep, in the launching process: create the tracking store, then report failures."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The environment reaches joblib/loky workers, submitit subprocesses and SLURM jobs.
        os.environ[SWEEP_ENV] = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.started = time.time()
        tracking.prepare_store(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = os.environ.pop(SWEEP_ENV, "unnamed")
        folder = _failures_dir(config.hydra.sweep.dir, sweep_id)
        records = (
            [read_json(p) for p in sorted(folder.glob("job_*.json"))] if folder.is_dir() else []
        )
        for p in folder.glob("job_*.json") if folder.is_dir() else []:
            p.unlink()
        if folder.is_dir():
            folder.rmdir()
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()
        elapsed = time.time() - getattr(self, "started", time.time())
        if not records:
            log.info("sweep finished in %.0f s, no job failed", elapsed)
            return
        records.sort(key=lambda r: r["job"])
        lines = [f"{len(records)} job(s) of the sweep failed ({elapsed:.0f} s):"]
        lines += [
            f"  job {r['job']}: {r['run_dir']}: {r['error']}  [{' '.join(r['overrides'])}]"
            for r in records
        ]
        print("\n".join(lines), flush=True)
        raise SystemExit(1)
