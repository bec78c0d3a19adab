"""Experiment tracking with MLflow, in one place: no other module imports mlflow.

A run directory is the record of a run; tracking mirrors it into an MLflow store so hundreds of runs
can be searched and compared. Tracking never costs a result: a store that cannot be opened, is
locked or goes away mid-run turns every call into a warning and a no-op, the run directory is
still written complete, and ``python -m backdoor_study.sync`` logs it afterwards.

Entry points call :func:`start` (a context manager yielding a :class:`Tracker`) around the work
and :func:`log_train_run` / :func:`log_eval_run` once the run directory is written; ``sync`` calls
the same two functions on finished run directories, so a run logged live and one synced later
look the same. One MLflow run per (kind, run directory, config digest): a resumed or re-logged run
reuses it, so re-running a sweep or ``sync`` never adds runs.

Store: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///{runs_root}/mlflow.db``
with artifacts in ``{runs_root}/mlartifacts``. A fresh SQLite store is not safe under concurrent
creators, so multirun sweeps create it once in the launching process (:func:`prepare_store`, called
by ``backdoor_study.sweep.SweepCallback``). MLflow builds a store by replaying its schema
migrations (~2 s); a new store here starts as a copy of an empty one made once per MLflow version
and cached (:func:`cache_dir`).

Who calls this module in a Hydra multirun sweep is ``tracking.sweep_logging``'s choice: with
``launcher`` (the default) the jobs never import MLflow or matplotlib (they track through
``backdoor_study.sweep.tracked``, which leaves a record instead) and the sweep's logger (a
process forked from the launching one) logs each finished run directory through ``sync``, i.e.
with :func:`start` and :func:`log_train_run` as here; with ``jobs`` every job calls them itself.
Single runs log live.

``BACKDOOR_STUDY_TRACKING=none`` turns tracking off whatever the config says (the test suite sets
it so that only tracking tests pay for a store).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from backdoor_study import rundir
from backdoor_study.config import CACHE_ENV, DEFAULT_CACHE_DIR
from backdoor_study.utils import read_json, write_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = logging.getLogger("backdoor_study.tracking")

TRACKING_ENV = "BACKDOOR_STUDY_TRACKING"
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = rundir.TRACKING_ARTIFACTS_DIR
TAG = "backdoor_study."  # prefix of our own tags
KINDS = ("train", "eval", "detect", "sanitize", "classic")
# Run directory files logged as artifacts when present.
RUN_ARTIFACTS = (
    rundir.RESOLVED_CONFIG_FILE,
    rundir.METADATA_FILE,
    rundir.METRICS_FILE,
    "experiment_summary.csv",
    "history.csv",
    "poison.json",
)
MLFLOW_DIGEST_LEN = 36  # MLflow's dataset digest column; the full sha256 goes in a tag
PARAM_VALUE_MAX = 6000
# MLflow's log_batch limits (per call): params, tags, all entities together
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000


# The prefix of the INFO lines saying what MLflow cost: each run tracked in its own process writes
# one to its train.log (``tracking-time train: ...``); a sweep's launching process writes its
# store's (``tracking-time store: ...``) and, logging the jobs' runs, its total
# (``tracking-time sweep: ...``). benchmarks/sweep.py sums them.
TRACKING_TIME_LOG = "tracking-time"


class TrackingError(RuntimeError):
    """The tracking store could not be used (always caught and turned into a warning)."""


# --------------------------------------------------------------------------------------- config
def enabled(cfg: DictConfig | None) -> bool:
    """Whether ``cfg.tracking`` asks for MLflow (and ``BACKDOOR_STUDY_TRACKING`` does not veto)."""
    if os.environ.get(TRACKING_ENV, "").lower() == "none":
        return False
    tracking = OmegaConf.select(cfg, "tracking") if cfg is not None else None
    return tracking is not None and str(tracking.get("name", "none")) == "mlflow"


def store_uri(
    tracking: DictConfig, runs_root: str | Path | None, recorded: str | None = None
) -> str:
    """Where runs are logged: ``tracking.uri``, ``$MLFLOW_TRACKING_URI``, the store a training run
    recorded (``recorded``, for eval/detect/sanitize), else the SQLite file in ``runs_root``."""
    if tracking.get("uri"):
        return str(tracking.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if recorded:
        return recorded
    if runs_root is None:
        raise TrackingError("no tracking store: set tracking.uri or MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(runs_root).resolve() / STORE_FILE}"


def _artifact_location(uri: str) -> str | None:
    """A SQLite store keeps artifacts beside its file; a server decides its own artifact root."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / ARTIFACTS_DIR).resolve().as_uri()
    return None


def _client(tracking: DictConfig, uri: str) -> Any:
    os.environ.setdefault(
        "MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(tracking.get("http_timeout_s", 10)))
    )
    os.environ.setdefault(
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(int(tracking.get("http_retries", 1)))
    )
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        if not db.exists():
            _seed_sqlite_store(db)
    return MlflowClient(tracking_uri=uri)


def cache_dir() -> Path:
    """Where reusable files are cached: ``$BACKDOOR_STUDY_CACHE_DIR``, else ``data/cache`` (the
    same place as the parsed PhysioNet sets, ``data.cache_dir``)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def store_template() -> Path:
    """An empty SQLite store with MLflow's current schema (no experiment yet), made once per
    MLflow version and set of schema migrations and kept in :func:`cache_dir`."""
    import hashlib

    import mlflow
    from mlflow.store.db import utils as db_utils

    versions = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    migrations = sorted(p.name for p in versions.glob("*.py"))
    key = hashlib.sha256("\n".join(migrations).encode()).hexdigest()[:12]
    template = cache_dir() / f"mlflow-{mlflow.__version__}-{key}-empty.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
        try:
            engine = db_utils.create_sqlalchemy_engine_with_retry(f"sqlite:///{tmp}")
            db_utils._initialize_tables(engine)  # what MLflow runs on an empty database
            engine.dispose()
            os.replace(tmp, template)  # complete or absent
        finally:
            tmp.unlink(missing_ok=True)
    return template


def _seed_sqlite_store(db: Path) -> None:
    """Start a new SQLite store as a copy of :func:`store_template`. MLflow builds a new store by
    replaying its ~70 schema migrations, ~2 s each time; a copy takes milliseconds and is the same
    database. MLflow adds the Default experiment (with this store's artifact root) when it opens
    it. The copy is put in place only if no store exists there by then (never replaced). Any
    failure leaves MLflow to create the store itself, as without the cache."""
    import shutil

    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(store_template(), tmp)
        with contextlib.suppress(FileExistsError):  # another process made the store meanwhile
            os.link(tmp, db)
    except Exception as e:  # noqa: BLE001 - MLflow then creates the store as usual
        log.debug("no store template (%s: %s); MLflow creates the store", type(e).__name__, e)
    finally:
        tmp.unlink(missing_ok=True)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException as e:  # created meanwhile by a parallel job
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise e
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"tracking.experiment={name!r} is deleted in {uri}; restore it or choose another name"
        )
    return exp.experiment_id


def open_experiment(tracking: DictConfig, uri: str) -> tuple[Any, str]:
    """An MLflow client on ``uri`` and the id of ``tracking.experiment`` (created if absent).
    Raises when the store cannot be used: callers that must not fail catch it."""
    client = _client(tracking, uri)
    return client, _experiment_id(client, str(tracking.experiment), uri)


def prepare_store(cfg: DictConfig) -> str | None:
    """Create the store and the experiment now (before parallel jobs, or a sweep's logger, log
    to it); the experiment id, or None (with a warning) when tracking is off or the
    store cannot be opened."""
    if not enabled(cfg):
        return None
    t0 = time.perf_counter()
    try:
        experiment_id = open_experiment(
            cfg.tracking, store_uri(cfg.tracking, cfg.get("runs_root"))
        )[1]
    except Exception as e:  # noqa: BLE001 - tracking must never stop the work
        _warn_unavailable(e)
        return None
    log.info("%s store: MLflow store ready in %.3f s", TRACKING_TIME_LOG, time.perf_counter() - t0)
    return experiment_id


def _warn_unavailable(err: BaseException) -> None:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    log.warning(
        "MLflow tracking unavailable (%s: %s); the run directory is written as usual: "
        "log it later with `python -m backdoor_study.sync runs_root=...`",
        type(err).__name__,
        first[:300],
    )


# --------------------------------------------------------------------------------------- tracker
class Tracker:
    """No tracking: every call does nothing. ``run_id`` is None. ``elapsed_s``: seconds spent
    tracking this run so far (opening it, the ``log_*_run`` calls, ending it)."""

    run_id: str | None = None
    uri: str | None = None
    elapsed_s: float = 0.0

    def log_params(self, params: dict[str, Any]) -> None:
        """Flattened config values (dotted keys)."""

    def log_epoch(self, metrics: dict[str, Any], step: int) -> None:
        """Per-epoch metrics at ``step`` (the epoch number)."""
        self.log_epochs([(metrics, step)])

    def log_epochs(self, rows: list[tuple[dict[str, Any], int]]) -> None:
        """Many (metrics, step) at once (a whole history.csv)."""

    def log_final(self, metrics: dict[str, Any]) -> None:
        """Final scalar metrics (non-numeric values are skipped)."""

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Files that exist among ``paths``."""

    def log_figure(self, figure: Any, name: str) -> None:
        """A matplotlib figure, saved as ``figures/{name}.svg`` (:func:`save_figure`)."""

    def log_dataset(self, name: str, digest: str, source: dict[str, Any], context: str) -> None:
        """The data as an MLflow input carrying our own full-content digest."""

    def set_tags(self, tags: dict[str, Any]) -> None:
        """String tags."""


class MlflowTracker(Tracker):
    """One MLflow run. Any store error disables the tracker with one warning; the run goes on.

    Tags and metrics are queued and written together, in as few ``log_batch`` calls as MLflow's
    limits allow, by :meth:`flush` (the ``log_*_run`` functions and :meth:`end` call it): each call
    is a database transaction. Params are written at once, so a running run shows its config.
    ``new``: the run was created by this tracker, so nothing is logged to it yet (no need to read
    it back to skip what is there)."""

    def __init__(self, client: Any, run_id: str, uri: str, new: bool = False) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.failed = False
        self._params: set[str] | None = set() if new else None  # keys logged (None: unknown)
        self._datasets: set[str] | None = set() if new else None  # digests logged
        self._metrics: list[Any] = []
        self._tags: list[Any] = []

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if self.failed:
            yield
            return
        try:
            yield
        except Exception as e:  # noqa: BLE001 - tracking must never stop the work
            self.failed = True
            _warn_unavailable(e)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        with self._guard():
            if self.failed:
                return
            if self._params is None:  # a reused run: params are immutable, skip those logged
                self._params = set(self.client.get_run(self.run_id).data.params)
            todo = [Param(k, v) for k, v in params.items() if k not in self._params]
            for i in range(0, len(todo), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=todo[i : i + MAX_PARAMS_PER_BATCH])
            self._params.update(p.key for p in todo)

    def log_epochs(self, rows: list[tuple[dict[str, Any], int]]) -> None:
        self._log_metrics(rows)

    def log_final(self, metrics: dict[str, Any]) -> None:
        self._log_metrics([(metrics, 0)])

    def _log_metrics(self, rows: list[tuple[dict[str, Any], int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [
            Metric(k, float(v), now, int(step))
            for metrics, step in rows
            for k, v in _scalars(metrics).items()
        ]

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._tags += [RunTag(k, str(v)) for k, v in tags.items() if v is not None]

    def flush(self) -> None:
        """Write the queued tags and metrics: one transaction per ``MAX_TAGS_PER_BATCH`` tags /
        ``MAX_ENTITIES_PER_BATCH`` entities (one for a run's usual 10-20 tags and ~100 metrics)."""
        with self._guard():
            if self.failed:
                return
            while self._tags or self._metrics:
                tags = self._tags[:MAX_TAGS_PER_BATCH]
                metrics = self._metrics[: MAX_ENTITIES_PER_BATCH - len(tags)]
                self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
                del self._tags[: len(tags)], self._metrics[: len(metrics)]

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        with self._guard():
            if self.failed:
                return
            for p in paths:
                if Path(p).is_file():
                    self.client.log_artifact(self.run_id, str(p), artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        with self._guard():
            if self.failed:
                return
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.{FIGURE_FORMAT}"
                save_figure(figure, path)
                self.client.log_artifact(self.run_id, str(path), "figures")

    def log_dataset(self, name: str, digest: str, source: dict[str, Any], context: str) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        with self._guard():
            if self.failed:
                return
            short = digest[:MLFLOW_DIGEST_LEN]
            if self._datasets is None:  # a reused run: it may have the input already
                inputs = self.client.get_run(self.run_id).inputs.dataset_inputs
                self._datasets = {d.dataset.digest for d in inputs}
            if short in self._datasets:
                return
            # MLflow's own digests hash only the first rows of a dataset, which would miss
            # poisoning: ours is a sha256 over every array (ClinicalDataset.digest()).
            ds = MetaDataset(_data_source(source), name=name, digest=short)
            tags = [InputTag("mlflow.data.context", context), InputTag(f"{TAG}data_digest", digest)]
            inputs = [DatasetInput(ds._to_mlflow_entity(), tags)]
            try:
                self.client.log_inputs(self.run_id, inputs)
            except MlflowException:  # tried once more; a second failure is _guard's
                # MLflow's SQL store looks the dataset up, then inserts it: a process that logs
                # the same new dataset in between (jobs logging their own runs, finishing
                # together) makes this insert fail (UNIQUE constraint), rolled back. The dataset
                # is in the store now, and a second try only links it to this run.
                self.client.log_inputs(self.run_id, inputs)
            self._datasets.add(short)

    def end(self, status: str) -> None:
        self.flush()
        with self._guard():
            if not self.failed:
                self.client.set_terminated(self.run_id, status)


def _data_source(files: dict[str, Any]) -> Any:
    """The files a dataset was read from (and their sha256), as an MLflow dataset source."""
    from mlflow.data.dataset_source import DatasetSource

    class ClinicalDataSource(DatasetSource):
        def __init__(self, files: dict[str, Any]) -> None:
            self._files = files

        @staticmethod
        def _get_source_type() -> str:
            return "backdoor_study"

        def load(self, **kwargs: Any) -> Any:
            raise NotImplementedError("rebuild the data from the run directory's config")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> ClinicalDataSource:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"files": self._files}

        @classmethod
        def from_dict(cls, source_dict: dict[str, Any]) -> ClinicalDataSource:
            return cls(source_dict.get("files", {}))

    return ClinicalDataSource(json.loads(json.dumps(files, default=str)))


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric values of a (nested) metrics dict, nested keys dotted (``before.ASR``)."""
    out = {}
    for key, v in metrics.items():
        k = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(_scalars(v, f"{k}."))
        elif isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float, np.integer, np.floating)) and not (
            isinstance(v, float) and math.isinf(v)
        ):
            out[k] = float(v)
    return out


def flatten(container: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.hidden_sizes": "[128, 64]", ...}`` (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(container, dict):
        for k, v in container.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    text = (
        json.dumps(container) if isinstance(container, (list, type(None), bool)) else str(container)
    )
    out[prefix.rstrip(".")] = text[:PARAM_VALUE_MAX]
    return out


# --------------------------------------------------------------------------------------- runs
def run_name(run_cfg: DictConfig | dict[str, Any], kind: str = "train") -> str:
    """``lstm-rare_value-0.01-s42``; other kinds are prefixed (``eval-lstm-...``)."""
    c = run_cfg
    name = f"{c['model']['name']}-{c['attack']['tag']}-{c['poison_rate']}-s{c['seed']}"
    return name if kind == "train" else f"{kind}-{name}"


def run_tags(run_cfg: DictConfig | dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Tags that find a run in the UI: what was attacked how, on which data, by which code."""
    c = run_cfg
    commit = metadata.get("environment", {}).get("git", {}).get("commit")
    return {
        "model": c["model"]["name"],
        "trigger": c["trigger"]["name"],
        "attack": c["attack"]["name"],
        "poison_rate": c["poison_rate"],
        "seed": c["seed"],
        "data": c["data"]["name"],
        "data_digest": metadata.get("data", {}).get("digest"),
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
    }


SEARCH = object()  # start(found=...) default: look the run up in the store


def find_run(client: Any, experiment_id: str, kind: str, run_dir: Path, config_digest: str) -> Any:
    """The MLflow run already recording (kind, run dir, config digest), or None."""
    rd = str(Path(run_dir).resolve())
    if "'" in rd:
        return None  # not expressible in MLflow's filter syntax; a new run is created
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG}kind` = '{kind}' and tags.`{TAG}run_dir` = '{rd}' "
            f"and tags.`{TAG}config_digest` = '{config_digest}'"
        ),
        max_results=1,
    )
    return runs[0] if runs else None


def _open_run(
    cfg: DictConfig,
    kind: str,
    run_dir: Path,
    run_cfg: DictConfig | dict[str, Any],
    config_digest: str,
    parent_run_id: str | None,
    recorded_uri: str | None,
    found: Any = SEARCH,
    store: tuple[Any, str] | None = None,
) -> MlflowTracker | Tracker:
    try:
        runs_root = cfg.get("runs_root") or run_cfg.get("runs_root")
        uri = store_uri(cfg.tracking, runs_root, recorded_uri)
        if recorded_uri is not None and uri != recorded_uri:
            parent_run_id = None  # the training run lives in another store
        if store is not None and store[0].tracking_uri == uri:
            client, exp_id = store
        else:
            client, exp_id = open_experiment(cfg.tracking, uri)
        existing = (
            find_run(client, exp_id, kind, run_dir, config_digest) if found is SEARCH else found
        )
        if existing is not None:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {
                f"{TAG}kind": kind,
                f"{TAG}run_dir": str(Path(run_dir).resolve()),
                f"{TAG}config_digest": config_digest,
            }
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
                tags[f"{TAG}train_run_id"] = parent_run_id
            run_id = client.create_run(
                exp_id, run_name=run_name(run_cfg, kind), tags=tags
            ).info.run_id
        tracker = MlflowTracker(client, run_id, uri, new=existing is None)
        tracker.log_params(flatten(rundir.config_identity(run_cfg)))
        return tracker
    except Exception as e:  # noqa: BLE001 - tracking must never stop the work
        _warn_unavailable(e)
        return Tracker()


@contextlib.contextmanager
def start(
    cfg: DictConfig,
    kind: str,
    run_dir: str | Path,
    *,
    config_digest: str,
    run_cfg: DictConfig | dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    recorded_uri: str | None = None,
    found: Any = SEARCH,
    store: tuple[Any, str] | None = None,
) -> Iterator[Tracker]:
    """Track the work inside the block as one MLflow run of ``kind``.

    ``cfg`` holds ``tracking`` (and ``runs_root`` for the default store); ``run_cfg`` (default
    ``cfg``) is the training config the run belongs to, for its name, tags and params. The MLflow
    run recording the same (kind, run_dir, config_digest) is reused; it ends FINISHED, or FAILED
    when the block raises. A caller that has just looked that run up in the same store
    (:func:`find_run`, as ``sync`` does) passes what it found, or None, as ``found``, and the
    store is not searched twice; one that has the store open already passes its (client,
    experiment id) as ``store`` (used where it is the store this run goes to), and the store is
    not opened again (a client and an experiment lookup, ~4 ms per run). With tracking off (or an
    unusable store) the tracker does nothing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is invalid: expected one of {list(KINDS)}")
    if not enabled(cfg):
        yield Tracker()
        return
    t0 = time.perf_counter()
    tracker = _open_run(
        cfg,
        kind,
        Path(run_dir),
        run_cfg if run_cfg is not None else cfg,
        config_digest,
        parent_run_id,
        recorded_uri,
        found,
        store,
    )
    tracker.elapsed_s = time.perf_counter() - t0
    try:
        yield tracker
    except BaseException:
        if isinstance(tracker, MlflowTracker):
            tracker.end("FAILED")
        raise
    if isinstance(tracker, MlflowTracker):
        t0 = time.perf_counter()
        tracker.end("FINISHED")
        tracker.elapsed_s += time.perf_counter() - t0
        # what tracking cost this run (train.log has it; benchmarks/sweep.py sums it)
        log.info("%s %s: MLflow tracking took %.3f s", TRACKING_TIME_LOG, kind, tracker.elapsed_s)


def _timed(fn):  # noqa: ANN001, ANN202 - a decorator for the log_*_run(tracker, ...) functions
    """Add the call's wall time to ``tracker.elapsed_s`` (its first argument)."""

    @functools.wraps(fn)
    def wrapper(tracker: Tracker, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(tracker, *args, **kwargs)
        finally:
            if isinstance(tracker, MlflowTracker):
                tracker.flush()
            if tracker.run_id is not None:
                tracker.elapsed_s += time.perf_counter() - t0

    return wrapper


# --------------------------------------------------------------------------------------- run dirs
@_timed
def log_train_run(
    tracker: Tracker,
    run_dir: str | Path,
    log_model: bool = False,
    run_cfg: DictConfig | dict[str, Any] | None = None,
) -> None:
    """Log a completed training run directory: tags, per-epoch history, final metrics, artifacts,
    confusion matrices, the dataset input; then record the MLflow run id in run_metadata.json.
    ``run_cfg``: the run's resolved config when the caller has it loaded already."""
    if tracker.run_id is None:
        return
    run_dir = Path(run_dir)
    metadata = read_json(run_dir / rundir.METADATA_FILE)
    if run_cfg is None:
        run_cfg = rundir.read_run_config(run_dir)
    tracker.set_tags(run_tags(run_cfg, metadata))
    history = run_dir / "history.csv"
    if history.exists():
        rows = pd.read_csv(history).to_dict("records")
        tracker.log_epochs(
            [({k: v for k, v in r.items() if k != "epoch"}, int(r["epoch"])) for r in rows]
        )
    tracker.log_final(read_json(run_dir / rundir.METRICS_FILE))
    data = metadata.get("data", {})
    if data.get("digest"):
        tracker.log_dataset(
            data.get("name", "data"), data["digest"], data.get("source", {}), "train"
        )
    for name, fig in confusion_figures(run_dir).items():
        tracker.log_figure(fig, name)
    if log_model:
        tracker.log_artifacts([run_dir / "final_model.pt"], "model")
    if metadata.get("mlflow", {}).get("run_id") != tracker.run_id:
        metadata["mlflow"] = {"run_id": tracker.run_id, "tracking_uri": tracker.uri}
        write_json(run_dir / rundir.METADATA_FILE, metadata)
    tracker.log_artifacts([run_dir / f for f in RUN_ARTIFACTS])


@_timed
def log_stage_run(
    tracker: Tracker,
    run_dir: str | Path,
    metrics: dict[str, Any],
    files: Iterable[Path],
    run_cfg: DictConfig | dict[str, Any] | None = None,
) -> None:
    """Log what a later stage (eval, detect, sanitize) made of training run ``run_dir``: the
    training run's tags, the stage's numeric metrics (nested keys dotted) and its files.
    ``run_cfg``: the training run's resolved config when the caller has it loaded already."""
    if tracker.run_id is None:
        return
    run_dir = Path(run_dir)
    if run_cfg is None:
        run_cfg = rundir.read_run_config(run_dir)
    tracker.set_tags(
        run_tags(
            run_cfg,
            read_json(run_dir / rundir.METADATA_FILE),
        )
    )
    tracker.log_final(metrics)
    tracker.log_artifacts(files)


def log_eval_run(
    tracker: Tracker, run_dir: str | Path, result: dict[str, Any], result_file: Path
) -> None:
    """Log an eval result (its recomputed metrics, whether they match train) and its file.
    Not ``_timed`` itself: it is all :func:`log_stage_run`, which is (timing both would count
    the same seconds twice)."""
    log_stage_run(
        tracker,
        run_dir,
        {**result.get("metrics", {}), "matches_train": result.get("matches_train")},
        [result_file],
    )


# --------------------------------------------------------------------------------------- classic study
# MLflow saves sklearn models with skops (no arbitrary pickle). Our own pipelines hold these types
# beyond skops' default trusted set (tree node arrays, HistGradientBoosting predictors, the SVM's
# calibration); we wrote the files ourselves, so loading them back is trusted.
SKOPS_TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]
SKLEARN_MODEL_REQUIREMENTS = ("scikit-learn", "numpy", "scipy", "skops", "mlflow")
CLASSIC_ARTIFACTS = (*RUN_ARTIFACTS, "split.json", "poisoned_indices.npy", "flagged_indices.npy")


def _sklearn_model_kwargs(pipeline: Any, x_example: np.ndarray) -> dict[str, Any]:
    from importlib import metadata as importlib_metadata

    from mlflow.models import infer_signature

    return {
        "signature": infer_signature(x_example, pipeline.predict(x_example)),
        "skops_trusted_types": SKOPS_TRUSTED_TYPES,
        # stated, not inferred: inference imports every loaded package (seconds per model)
        "pip_requirements": [
            f"{pkg}=={importlib_metadata.version(pkg)}" for pkg in SKLEARN_MODEL_REQUIREMENTS
        ],
    }


def save_sklearn_model(path: Path, pipeline: Any, x_example: np.ndarray) -> None:
    """A fitted scikit-learn model in MLflow's sklearn format at ``path`` (a directory;
    ``mlflow.sklearn.load_model`` reads it back), with a signature inferred from ``x_example``
    (N, D). Written beside ``path`` and renamed into place, replacing what was there."""
    import shutil
    import tempfile

    import mlflow.sklearn

    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        mlflow.sklearn.save_model(
            pipeline, tmp / "model", **_sklearn_model_kwargs(pipeline, x_example)
        )
        if path.exists():
            shutil.rmtree(path)
        (tmp / "model").rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def classic_tags(run_cfg: DictConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    """Tags of a classic-study run: what was poisoned how, sanitised how, on which data."""
    return {
        "model": run_cfg.model.name,
        "attack": run_cfg.attack.name,
        "poison_rate": run_cfg.poison_rate,
        "seed": run_cfg.seed,
        "mitigation": run_cfg.mitigation.name,
        "data": run_cfg.data.name,
        "data_digest": metadata.get("data", {}).get("digest"),
        "git_commit": metadata.get("environment", {}).get("git", {}).get("commit"),
    }


def classic_params(run_cfg: DictConfig, metadata: dict[str, Any], metrics: dict[str, Any]) -> dict:
    """The params of a single classic run (dataset, model, attack, level, seed, n poisoned,
    mitigation), from its config, metadata and metrics: the runner and ``sync`` log the same."""
    return {
        "dataset": str(metadata.get("data", {}).get("name", run_cfg.data.name)),
        "model": str(run_cfg.model.name),
        "attack": str(run_cfg.attack.name),
        "poison_level": float(run_cfg.poison_rate),
        "seed": int(run_cfg.seed),
        "n_poisoned": metrics["n_poisoned"],
        "mitigation": str(run_cfg.mitigation.name),
    }


@_timed
def log_classic_dir(tracker: Tracker, run_dir: str | Path) -> None:
    """Log a finished classic run directory after the fact (``sync``): a single run as the runner
    logs it (its saved ``model/`` as the model artifact), a study run (learning curves, accuracy
    paradox) with its metrics and every file it wrote."""
    if not isinstance(tracker, MlflowTracker):
        return
    run_dir = Path(run_dir)
    metadata = read_json(run_dir / rundir.METADATA_FILE)
    metrics = read_json(run_dir / rundir.METRICS_FILE)
    run_cfg = rundir.load_run_config(run_dir)
    if metadata.get("study") == "single":
        log_classic_run(tracker, run_dir, classic_params(run_cfg, metadata, metrics))
        if (run_dir / "model").is_dir():
            with tracker._guard():
                if not tracker.failed:
                    tracker.client.log_artifacts(tracker.run_id, str(run_dir / "model"), "model")
        return
    tracker.set_tags(classic_tags(run_cfg, metadata))
    numeric = {
        k.replace("/", "."): v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    tracker.log_final(numeric)
    tracker.log_artifacts(sorted(p for p in run_dir.iterdir() if p.is_file()))


def log_classic_run(
    tracker: Tracker,
    run_dir: str | Path,
    params: dict[str, Any],
    pipeline: Any = None,
    x_example: np.ndarray | None = None,
) -> None:
    """Log a completed classic run directory: ``params`` (dataset, model, attack, level, seed,
    n poisoned, mitigation), its final metrics, the dataset input, the confusion matrix and the
    poisoned indices, and the fitted ``pipeline`` via ``mlflow.sklearn`` with a signature
    inferred from ``x_example``. Records the MLflow run id in run_metadata.json."""
    if not isinstance(tracker, MlflowTracker):
        return
    run_dir = Path(run_dir)
    metadata = read_json(run_dir / rundir.METADATA_FILE)
    run_cfg = rundir.load_run_config(run_dir)
    tracker.set_tags(classic_tags(run_cfg, metadata))
    tracker.log_params(
        {k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()}
    )
    tracker.log_final(read_json(run_dir / rundir.METRICS_FILE))
    data = metadata.get("data", {})
    if data.get("digest"):
        tracker.log_dataset(
            data.get("name", "data"), data["digest"], data.get("source", {}), "train"
        )
    tracker.log_artifacts([run_dir / "confusion_matrix.png"], "figures")
    if pipeline is not None and x_example is not None:
        # saved, then logged as the run's `model` artifact through the client: the fluent
        # mlflow.set_tracking_uri/start_run would leave a process-wide store (and
        # $MLFLOW_TRACKING_URI) behind for every later run of the process
        import tempfile

        with tracker._guard(), tempfile.TemporaryDirectory() as tmp:
            if not tracker.failed:
                save_sklearn_model(Path(tmp) / "model", pipeline, x_example)
                tracker.client.log_artifacts(tracker.run_id, str(Path(tmp) / "model"), "model")
    if metadata.get("mlflow", {}).get("run_id") != tracker.run_id:
        metadata["mlflow"] = {"run_id": tracker.run_id, "tracking_uri": tracker.uri}
        write_json(run_dir / rundir.METADATA_FILE, metadata)
    tracker.log_artifacts([run_dir / f for f in CLASSIC_ARTIFACTS])


def train_run_id(run_dir: str | Path) -> tuple[str | None, str | None]:
    """The MLflow run id and store URI a training run recorded (None, None when not tracked)."""
    meta = Path(run_dir) / rundir.METADATA_FILE
    if not meta.exists():
        return None, None
    recorded = read_json(meta).get("mlflow", {})
    return recorded.get("run_id"), recorded.get("tracking_uri")


FIGURE_FORMAT = "svg"
# text as <text> elements, not glyph outlines: the MLflow UI (a browser) renders it; a fixed
# salt for the SVG's element ids and no date, so the same figure gives the same bytes
_SVG_SETTINGS = {"svg.fonttype": "none", "svg.hashsalt": "backdoor_study"}


def save_figure(figure: Any, target: Any) -> None:
    """Write a matplotlib figure as the SVG a run logs (``target``: a path or a binary file).

    SVG with its text as text, not PNG: the logger draws a confusion-matrix figure for every
    training run, and nearly all of that figure's drawing is its text (counts, ticks, titles).
    Rasterising the glyphs and encoding the PNG took 40 ms of CPU per demo run, the SVG takes
    23 ms (2026-12-07, this figure), a sixth of what logging a run costs. The MLflow UI shows
    SVG artifacts as images. The two settings are matplotlib rcParams, which are process-wide
    while the figure is saved: where the sweep's logger is a thread (no fork: not Linux), an SVG
    that a job saves at the same moment takes them too (text as text, ids from the fixed salt)."""
    import matplotlib

    with matplotlib.rc_context(_SVG_SETTINGS):
        figure.savefig(target, format=FIGURE_FORMAT, metadata={"Date": None})


class _Figures(threading.local):
    """Each thread's confusion-matrix figures, by (panels, labels)."""

    def __init__(self) -> None:
        self.by_shape: dict[tuple[int, int], tuple[Any, Any]] = {}


_figures = _Figures()


def confusion_figures(run_dir: Path) -> dict[str, Any]:
    """One figure: the confusion matrices of the clean and (with a trigger) the triggered test
    set, from predictions.parquet and the run's decision threshold. A bare ``Figure``, not
    pyplot's: nothing global to close, and safe in a sweep's logging thread (where there is no
    fork) while the process's main thread runs a job.

    The figure is valid until this thread's next call: each thread keeps one figure per number
    of panels and labels and redraws its matrices, which a sweep's logger does once per run.
    Making a new figure and its axes took about a quarter of the logger's CPU per demo run
    (23 -> 7 ms); the saved figure is byte for byte that of a new figure
    (``tests/test_tracking.py``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    from backdoor_study.metrics import predict

    path = run_dir / "predictions.parquet"
    if not path.exists():
        return {}
    frame = pd.read_parquet(path)
    threshold = read_json(run_dir / rundir.METRICS_FILE).get("decision_threshold")
    cut = 0.5 if threshold is None or math.isnan(float(threshold)) else float(threshold)
    y = frame["y_true"].to_numpy()
    labels = list(range(sum(c.startswith("prob_") and "triggered" not in c for c in frame)))
    preds = {"clean test set": frame["pred"].to_numpy()}
    triggered_cols = [f"prob_triggered_{c}" for c in labels]
    if all(c in frame for c in triggered_cols):
        preds["triggered test set"] = predict(frame[triggered_cols].to_numpy(), cut)
    shape = (len(preds), len(labels))
    if shape not in _figures.by_shape:
        fig = Figure(figsize=(4 * len(preds), 3.6), dpi=72)
        _figures.by_shape[shape] = fig, fig.subplots(1, len(preds), squeeze=False)[0]
    fig, axes = _figures.by_shape[shape]
    for ax, (title, pred) in zip(axes, preds.items()):
        for artist in [*ax.images, *ax.texts]:  # the previous run's matrix
            artist.remove()
        ConfusionMatrixDisplay.from_predictions(y, pred, labels=labels, ax=ax, colorbar=False)
        ax.set_title(title)
    fig.suptitle(f"{run_dir.name}: decision threshold {cut:.3f}")
    return {"confusion_matrices": fig}
