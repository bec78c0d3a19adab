"""The run directory: what a run writes, how its state is read back, and the never-clobber rules.

A run directory is self-contained: later stages (eval, detectors, reports) read only it. Files:

- ``.hydra/config.yaml``, ``.hydra/overrides.yaml`` (as Hydra composed them), ``config_resolved.yaml``
- ``run_metadata.json``: config digest, data source and digest, split digest, versions, git commit,
  device, timings, status (``running`` -> ``complete``)
- ``splits.json``, ``poisoned_indices.npy``, ``poison.json``, ``preprocessing.json``
- ``checkpoint_epoch_{N}.pt`` (trainer), ``final_model.pt``, ``history.csv``
- ``predictions.parquet``, ``experiment_summary.csv`` and, last, ``metrics.json``

``metrics.json`` is written last and atomically: its presence marks a completed run.

Also owned here: :func:`lock` (one process at a time per run directory, for the whole
check-train-write span of ``train`` and for ``eval``/``detect``/``sanitize``), :func:`load_run` (the
one way to load a finished run: config -> data as trained on -> model) and reading
``run_metadata.json`` with an error that says what to do when it is damaged.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import functools
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from backdoor_study.training.checkpoint import list_checkpoints
from backdoor_study.utils import atomic_write_text, read_json, sha256_file

if TYPE_CHECKING:
    from backdoor_study.experiment import Prepared
    from backdoor_study.models.base import ClinicalModel

log = logging.getLogger("backdoor_study.rundir")

METRICS_FILE = "metrics.json"
METADATA_FILE = "run_metadata.json"
RESOLVED_CONFIG_FILE = "config_resolved.yaml"
FINAL_MODEL_FILE = "final_model.pt"
POISONED_INDICES_FILE = "poisoned_indices.npy"
# Files whose sha256 run_metadata.json records at the end of training ("files") and eval checks.
RECORDED_FILES = (
    FINAL_MODEL_FILE,
    "predictions.parquet",
    POISONED_INDICES_FILE,
    "splits.json",
    "history.csv",
    RESOLVED_CONFIG_FILE,
    "poison.json",
    "preprocessing.json",
)
# Written by atomic_write_bytes as ``.{name}.{random}.tmp``; one left behind is a killed write.
TMP_GLOB = ".*.tmp"
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


def config_identity(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config (a DictConfig, or :func:`read_run_config`'s plain dict) minus keys
    that do not affect results (see NON_IDENTITY_KEYS)."""
    if isinstance(cfg, dict):
        container = copy.deepcopy(cfg)
    else:
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    for key in NON_IDENTITY_KEYS:
        container.pop(key, None)
    if container.get("sanitize", "<absent>") is None:  # not a sanitized retrain: digest as before
        container.pop("sanitize")
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


def read_metadata(run_dir: Path) -> dict[str, Any]:
    """``run_metadata.json`` of ``run_dir``; RunDirError naming the file when absent or damaged."""
    path = Path(run_dir) / METADATA_FILE
    if not path.is_file():
        raise RunDirError(f"{path} is missing: {run_dir} is not a complete run directory")
    try:
        meta = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(
            f"{path} is empty or corrupt ({type(e).__name__}: {e}); the run cannot be identified "
            "from it: move the directory aside and train again, or pass overwrite=true to replace it"
        ) from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path} holds a {type(meta).__name__}, expected a JSON object")
    return meta


def inspect(run_dir: Path) -> RunState:
    meta_path = run_dir / METADATA_FILE
    recorded = read_metadata(run_dir).get("config_digest") if meta_path.exists() else None
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
    return read_metadata(run_dir).get("config_identity", {}) if meta_path.exists() else {}


def refuse_other_config(
    run_dir: Path, state: RunState, digest: str, identity: dict[str, Any], overwrite: bool
) -> bool:
    """The never-clobber rule: a run directory holding a run of another config is refused
    (naming the differing keys) unless ``overwrite``. Returns whether the old run is to be
    replaced; nothing is deleted here (the replacement is built beside it, see
    :func:`staging_dir` and :func:`replace_with`)."""
    if not (
        state.has_run and state.recorded_digest is not None and state.recorded_digest != digest
    ):
        return False
    if not overwrite:
        diff = differing_keys(recorded_identity(run_dir), identity)
        raise RunDirError(
            f"{run_dir} holds a run with a different config (differs in: {', '.join(diff) or 'unknown'}); "
            "choose another runs_root/run_dir, or pass overwrite=true to replace it"
        )
    log.warning("overwrite=true: the run in %s is replaced once this one completes", run_dir)
    return True


def remove_stale_tmp(run_dir: Path) -> list[Path]:
    """Delete temp files a killed atomic write left in ``run_dir``; call only under :func:`lock`
    (a live writer's temp file looks the same)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.glob(TMP_GLOB) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temp file(s) left by an interrupted write in %s", len(stale), run_dir)
    return stale


def file_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of each of :data:`RECORDED_FILES` in ``run_dir`` (all must exist)."""
    return {name: sha256_file(Path(run_dir) / name) for name in RECORDED_FILES}


# --------------------------------------------------------------------------------------- locking
def lock_path(run_dir: Path) -> Path:
    """The lock file of ``run_dir``: beside it, not inside, so taking the lock never creates the
    run directory, never counts as run content, and survives the run directory being swapped."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def lock_holder(run_dir: Path) -> dict[str, Any]:
    """What the current holder of ``run_dir``'s lock wrote about itself ({} when unknown)."""
    try:
        text = lock_path(run_dir).read_text()
        return json.loads(text) if text.strip() else {}
    except (OSError, json.JSONDecodeError):
        return {}


@contextlib.contextmanager
def lock(
    run_dir: Path, *, config_digest: str | None = None, purpose: str = "run"
) -> Iterator[Path]:
    """Hold an exclusive OS lock (``fcntl.flock``) on ``run_dir`` for the ``with`` block.

    One process at a time checks, trains and writes a run directory. A second process waits;
    when the holder recorded a different ``config_digest`` than ours, it is refused at once
    (RunDirError naming the holder), because it would be refused after the wait anyway. The OS
    releases the lock when its process dies, so a killed run never blocks the next one. The lock
    is per open file: taking it twice in one process also waits, so do not nest it on one dir.
    """
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = lock_holder(run_dir)
            theirs = holder.get("config_digest")
            if config_digest is not None and theirs is not None and theirs != config_digest:
                raise RunDirError(
                    f"{run_dir} is being written by another process (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, {holder.get('purpose')}) with a different config "
                    f"(digest {theirs[:12]} vs {config_digest[:12]}); choose another run_dir"
                ) from None
            log.info("%s is locked by pid %s: waiting for it", run_dir, holder.get("pid"))
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "config_digest": config_digest,
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # a stale holder must not be read by the next waiter
    finally:
        os.close(fd)  # releases the lock


def staging_dir(run_dir: Path) -> Path:
    """Where ``overwrite=true`` builds the replacement of ``run_dir`` (beside it, same filesystem)."""
    return run_dir.parent / f".{run_dir.name}.new"


def fresh_staging_dir(run_dir: Path) -> Path:
    """:func:`staging_dir`, emptied of a replacement that a killed process began (under :func:`lock`)."""
    staged = staging_dir(run_dir)
    discard(staged)
    return staged


@contextlib.contextmanager
def opened(
    run_dir: Path, *, config_digest: str | None = None, purpose: str = "run"
) -> Iterator[Path]:
    """:func:`lock` ``run_dir`` and, under the lock, tidy what a killed writer left: finish (or
    undo) a half-done replacement and remove its temp files. Every stage that writes a run
    directory's run (train, the classic study) opens it this way."""
    with lock(run_dir, config_digest=config_digest, purpose=purpose) as path:
        recover_replacement(run_dir)
        remove_stale_tmp(run_dir)
        yield path


def _retired_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.old"


def discard(path: Path) -> None:
    """Delete a staging or retired directory if it is there."""
    if path.is_dir():
        shutil.rmtree(path)


# A nested run that lives inside its parent's run directory (``clean_reference`` under an explicit
# run_dir): the replacement has just used it, so it moves with the run.
NESTED_RUNS = ("clean_reference",)


def replace_with(run_dir: Path, staged: Path) -> None:
    """Swap the complete run in ``staged`` in for ``run_dir`` (under :func:`lock`).

    Two renames on one filesystem: ``run_dir`` -> ``.{name}.old``, ``staged`` -> ``run_dir``; then
    the old run is deleted. A crash between them is finished by :func:`recover_replacement`.
    """
    old = _retired_dir(run_dir)
    discard(old)
    for name in NESTED_RUNS:
        if (run_dir / name).is_dir() and not (staged / name).exists():
            os.replace(run_dir / name, staged / name)
    if run_dir.exists():
        os.replace(run_dir, old)
    os.replace(staged, run_dir)
    _fsync_dir(run_dir.parent)
    discard(old)


def recover_replacement(run_dir: Path) -> None:
    """Finish (or undo) a replacement that a killed process left half done; drop a staging
    directory that never completed. Call under :func:`lock`."""
    old, new = _retired_dir(run_dir), staging_dir(run_dir)
    if not run_dir.exists() and old.is_dir():
        if (new / METRICS_FILE).is_file():
            os.replace(new, run_dir)
            log.warning("finished replacing %s (the process doing it was killed)", run_dir)
        else:
            os.replace(old, run_dir)
            log.warning("restored %s (a replacement of it was killed)", run_dir)
    discard(old)
    if new.is_dir() and run_dir.exists():
        discard(new)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# --------------------------------------------------------------------------------------- loading
@dataclass
class LoadedRun:
    """A finished run, loaded back from its directory alone (see :func:`load_run`).

    ``prepared`` holds the data exactly as the model was trained and evaluated on (poisoned
    training samples included); ``poisoned_indices`` are positions into the training split
    (``prepared.splits.train``), as recorded in ``poisoned_indices.npy`` and checked against the
    rebuilt poisoning. ``model`` is in eval mode on ``device``.
    """

    run_dir: Path
    cfg: DictConfig
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    prepared: Prepared
    model: ClinicalModel
    device: torch.device
    poisoned_indices: np.ndarray
    checkpoint: Path
    checkpoint_state: dict[str, Any]


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The fully resolved config a run recorded, as plain dicts and lists: the objects
    ``OmegaConf.load`` builds its DictConfig from (OmegaConf's YAML rules), for readers that only
    read it (a sweep's logger and ``sync`` read one per run they log)."""
    path = Path(run_dir) / RESOLVED_CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory: no {RESOLVED_CONFIG_FILE}")
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_yaml_loader())


def load_run_config(run_dir: Path) -> DictConfig:
    """The fully resolved config a run recorded (what ``OmegaConf.load`` of it gives)."""
    return OmegaConf.create(read_run_config(run_dir))


@functools.cache
def _yaml_loader() -> type:
    """OmegaConf's YAML loader (its float syntax, no timestamps, an error on a duplicate key) on
    libyaml's parser where PyYAML was built with it, as PyYAML's own ``CSafeLoader`` pairs the C
    parser with ``SafeLoader``'s rules. The pure-Python parser took 3.5 ms of the ~8 ms that
    ``OmegaConf.load`` spends on a run's config, the C one 0.4 ms (the DictConfig is the rest);
    ``tests/test_rundir.py`` checks that both give the same objects."""
    from omegaconf._utils import get_yaml_loader  # what OmegaConf.load parses with

    rules = get_yaml_loader()
    if not yaml.__with_libyaml__:
        return rules

    class Loader(yaml.cyaml.CParser, rules):
        def __init__(self, stream: Any) -> None:
            yaml.cyaml.CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    return Loader


def check_finished(run_dir: Path) -> None:
    """RunDirError unless ``run_dir`` holds a finished run (checked before taking its lock, so a
    mistyped path creates nothing)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run_dir={str(run_dir)!r} does not exist or is not a directory")
    if not (run_dir / RESOLVED_CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir} is not a run directory: no {RESOLVED_CONFIG_FILE}")
    if not (run_dir / METRICS_FILE).is_file():
        raise RunDirError(
            f"{run_dir} holds an unfinished run (no {METRICS_FILE}); finish it with "
            "`python -m backdoor_study.train ... resume=auto` first"
        )


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto"
) -> LoadedRun:
    """Load a finished run: its config, its data rebuilt and checked against the recorded digests,
    and its model from ``final_model.pt`` (or ``checkpoint``), read with ``weights_only=True``.

    RunDirError for a missing directory, a directory that is not a run, an unfinished run, or a
    rebuilt split / poisoning that differs from the recorded one; DataValidationError when the
    data changed; CheckpointError for an unusable weights file.
    """
    from backdoor_study.experiment import prepare
    from backdoor_study.training import load_checkpoint, resolve_device, seed_everything

    run_dir = Path(run_dir)
    check_finished(run_dir)
    cfg = load_run_config(run_dir)
    metadata = read_metadata(run_dir)
    metrics = read_json(run_dir / METRICS_FILE)
    seed_everything(int(cfg.seed))
    prepared = prepare(cfg, expected_digest=metadata["data"]["digest"])
    if prepared.splits.digest(prepared.dataset) != metadata["split_digest"]:
        raise RunDirError(
            f"{run_dir}: the splits rebuilt from the config differ from the recorded ones"
        )
    poisoned = _recorded_poisoned_indices(run_dir)
    rebuilt = np.asarray(prepared.poison.poisoned_indices, dtype=np.int64)
    if not np.array_equal(poisoned, rebuilt):
        raise RunDirError(
            f"{run_dir / POISONED_INDICES_FILE} ({poisoned.size} indices) differs from the poisoning "
            f"rebuilt from the run's config ({rebuilt.size} indices): the file was edited or the "
            "poisoning code changed since the run"
        )

    ckpt_path = Path(checkpoint) if checkpoint else run_dir / FINAL_MODEL_FILE
    state = load_checkpoint(ckpt_path)
    written_by = state.get("config_digest", state.get("metadata", {}).get("config_digest"))
    if written_by is not None and written_by != metadata.get("config_digest"):
        raise RunDirError(
            f"{ckpt_path} was written by another config (digest {str(written_by)[:12]}, the run "
            f"records {str(metadata.get('config_digest'))[:12]}); pass a checkpoint of this run"
        )
    dev = resolve_device(device)
    model = model_from_state(cfg.model, prepared.spec, state, ckpt_path, dev)
    return LoadedRun(
        run_dir=run_dir,
        cfg=cfg,
        metadata=metadata,
        metrics=metrics,
        prepared=prepared,
        model=model,
        device=dev,
        poisoned_indices=poisoned,
        checkpoint=ckpt_path,
        checkpoint_state=state,
    )


def model_from_state(
    model_cfg: Any, spec: Any, state: dict[str, Any], path: Path, device: torch.device
) -> ClinicalModel:
    """The model ``model_cfg`` describes, with the weights of a loaded checkpoint ``state`` (read
    from ``path`` by ``load_checkpoint``), on ``device``, in eval mode."""
    from backdoor_study.models.base import build_model
    from backdoor_study.training import CheckpointError

    model = build_model(model_cfg, spec)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(path, f"its weights do not fit this run's model: {first}") from e
    return model.to(device).eval()


def _recorded_poisoned_indices(run_dir: Path) -> np.ndarray:
    path = run_dir / POISONED_INDICES_FILE
    if not path.is_file():
        raise RunDirError(f"{path} is missing; the run directory is incomplete")
    try:
        return np.load(path, allow_pickle=False).astype(np.int64)
    except (ValueError, OSError, EOFError) as e:
        raise RunDirError(
            f"{path} is not a readable .npy file ({e}); the run directory is damaged"
        ) from None


# MLflow's artifact store inside a runs tree (tracking.py) holds copies of run files: not runs.
TRACKING_ARTIFACTS_DIR = "mlartifacts"


def find_run_dirs(runs_root: Path) -> list[Path]:
    """Every completed training run directory under ``runs_root`` (``metrics.json`` is written
    last), leaving out the tracking store's artifact copies and dot-entries (staged overwrites
    ``.{name}.new`` / ``.{name}.old``, ``.submitit``, ...)."""
    return sorted(
        p.parent
        for p in Path(runs_root).rglob(METRICS_FILE)
        if TRACKING_ARTIFACTS_DIR not in (parts := p.relative_to(runs_root).parts)
        and not any(part.startswith(".") for part in parts)
        and (p.parent / RESOLVED_CONFIG_FILE).exists()
        and (p.parent / METADATA_FILE).exists()
    )
