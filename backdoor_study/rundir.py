"""The run directory: what a run writes, how its state is read back, and the never-clobber rules.

A run directory is self-contained: later stages (eval, detectors, reports) read only it. Files:

- ``.hydra/config.yaml``, ``.hydra/overrides.yaml`` (as Hydra composed them), ``config_resolved.yaml``
- ``run_metadata.json``: config digest, data source and digest, split digest, versions, git commit,
  device, timings, status (``running`` -> ``complete``)
- ``splits.json``, ``poisoned_indices.npy``, ``poison.json``, ``preprocessing.json``
- ``checkpoint_epoch_{N}.pt`` (trainer), ``final_model.pt``, ``history.csv``
- ``predictions.parquet``, ``experiment_summary.csv`` and, last, ``metrics.json``

``metrics.json`` is written last and atomically: its presence marks a completed run.
"""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backdoor_study.training.checkpoint import list_checkpoints
from backdoor_study.utils import atomic_write_text, read_json

log = logging.getLogger("backdoor_study.rundir")

METRICS_FILE = "metrics.json"
METADATA_FILE = "run_metadata.json"
RESOLVED_CONFIG_FILE = "config_resolved.yaml"
# Keys that do not change what a run computes: excluded from the config identity.
NON_IDENTITY_KEYS = (
    "resume",
    "overwrite",
    "device",
    "runs_root",
    "run_dir",
    "tracking",
    "clean_reference",
)
NON_IDENTITY_TRAINER_KEYS = ("progress",)
PACKAGES = (
    "torch",
    "numpy",
    "scikit-learn",
    "scipy",
    "pandas",
    "pyarrow",
    "hydra-core",
    "omegaconf",
    "captum",
    "mlflow",
)


class RunDirError(RuntimeError):
    """The run directory holds something that a run must not overwrite."""


def config_identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus keys that do not affect results (see NON_IDENTITY_KEYS)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    for key in NON_IDENTITY_KEYS:
        container.pop(key, None)
    for key in NON_IDENTITY_TRAINER_KEYS:
        container.get("trainer", {}).pop(key, None)
    return container


@dataclass
class RunState:
    """What a run directory holds before a run starts."""

    exists: bool
    complete: bool
    recorded_digest: str | None
    checkpoints: dict[int, Path]

    @property
    def has_run(self) -> bool:
        return self.complete or bool(self.checkpoints) or self.recorded_digest is not None


def inspect(run_dir: Path) -> RunState:
    meta_path = run_dir / METADATA_FILE
    recorded = read_json(meta_path).get("config_digest") if meta_path.exists() else None
    return RunState(
        exists=run_dir.exists(),
        complete=(run_dir / METRICS_FILE).exists(),
        recorded_digest=recorded,
        checkpoints=dict(list_checkpoints(run_dir)),
    )


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += differing_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def recorded_identity(run_dir: Path) -> dict[str, Any]:
    meta_path = run_dir / METADATA_FILE
    return read_json(meta_path).get("config_identity", {}) if meta_path.exists() else {}


def refuse_or_clear(
    run_dir: Path, digest: str, identity: dict[str, Any], overwrite: bool
) -> RunState:
    """The never-clobber rule every entry point applies before writing: a run directory holding
    a run of a different config is refused (naming the differing keys) unless ``overwrite``,
    which clears it. Returns the directory's state afterwards (``complete`` with the same
    digest means: skip)."""
    state = inspect(run_dir)
    if state.has_run and state.recorded_digest is not None and state.recorded_digest != digest:
        if not overwrite:
            diff = differing_keys(recorded_identity(run_dir), identity)
            raise RunDirError(
                f"{run_dir} holds a run with a different config (differs in: {', '.join(diff) or 'unknown'}); "
                "choose another runs_root/run_dir, or pass overwrite=true to replace it"
            )
        log.warning("overwrite=true: replacing the run in %s", run_dir)
        clear_for_overwrite(run_dir)
        state = inspect(run_dir)
    return state


def clear_for_overwrite(run_dir: Path) -> None:
    """Remove a previous run's files (explicit ``overwrite=true`` only). Hydra's open log stays."""
    for p in run_dir.iterdir():
        if p.name.endswith(".log"):
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` (as Hydra composed them) and
    ``config_resolved.yaml``, without the ``hydra`` node; atomic writes."""
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    container.pop("hydra", None)
    plain = OmegaConf.create(container)
    atomic_write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(plain))
    atomic_write_text(
        run_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(_overrides()))
    )
    atomic_write_text(run_dir / RESOLVED_CONFIG_FILE, OmegaConf.to_yaml(plain, resolve=True))


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not under @hydra.main (tests call run() directly)
        return []


def git_commit() -> dict[str, Any]:
    """The commit of the source tree this package runs from, and whether it had local changes."""
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment() -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git": git_commit(),
    }
