"""Hydra multirun sweeps: what happens once per sweep, and what every job of a sweep does.

``SweepCallback`` is registered in ``conf/train.yaml`` (``hydra.callbacks``) and runs in the
launching process, whichever launcher runs the jobs (basic, joblib, submitit local or SLURM):

- ``on_multirun_start`` names the sweep so its jobs can report to it, and sets up tracking as
  ``tracking.sweep_logging`` says:

  - ``launcher`` (default): the jobs do not touch MLflow at all (they never import it). A job
    that finishes a run leaves a small record in ``{sweep dir}/.sweep_finished/{sweep id}/``, and
    a :class:`SweepLogger` beside the launching process (a process forked from it on Linux, else
    a thread of it) creates the store, then logs each recorded run directory with ``sync``'s code
    (:func:`backdoor_study.sync.log_run_dir`) while the other jobs train. MLflow and matplotlib
    are imported once per sweep, not once per worker, and on Linux before the sweep starts: the
    entry point forks the logger's process as soon as the command line asks for a multirun
    (:func:`prewarm`), so it imports them while Hydra composes the sweep on the other core.
  - ``jobs``: the store and experiment are created now, before any job starts (parallel workers
    racing to create a fresh SQLite store break it), and every job logs its own run live.

- ``on_multirun_end`` makes the logger do a last pass and waits for it (it prints what
  the launching process spent in MLflow: ``tracking-time sweep: ...``), then lists the jobs that
  failed (run directory and first error line) and exits non-zero when there were any.

Both kinds of record live on the filesystem the jobs write their run directories to, so they
work where the launching process and the jobs are on different machines (SLURM). Tracking never
costs a result: an unusable store or an error in the logger is reported, the run
directories are complete, and ``python -m backdoor_study.sync`` logs them later.

:func:`run_job` wraps the task of every job: under multirun it resumes unfinished runs
(``resume=auto`` unless set) and turns an exception into a failure record instead of letting
Hydra stop the sweep at the first failed job. Outside multirun it only calls the task. Entry
points track their runs with :func:`tracked` (``tracking.start``, or under launcher logging a
finished record), and a run that is skipped as already complete calls :func:`record_finished`, so
re-running a sweep logs the runs of its cells that an earlier one left unlogged (never twice:
logging is idempotent). A clean reference that is not itself a cell is recorded only by the job
that trains it; ``sync`` logs any run directory.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from backdoor_study import tracking
from backdoor_study.config import ConfigError
from backdoor_study.utils import read_json, sha256_json, write_json

log = logging.getLogger("backdoor_study.sweep")

SWEEP_ENV = "BACKDOOR_STUDY_SWEEP_ID"
# Set by the launching process when its SweepLogger logs the sweep's runs (jobs then defer).
LOGGING_ENV = "BACKDOOR_STUDY_SWEEP_LOGGING"
FAILURES_DIR = ".sweep_failures"
# The forked logger runs only on an idle core (SCHED_IDLE) while it keeps up with the jobs, and
# at the jobs' own priority once this many finished runs wait for it (or the sweep has ended),
# where the user may raise it again (see _schedule).
LOGGER_CATCH_UP = 2
FINISHED_DIR = ".sweep_finished"


def in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under @hydra.main
        return False


def _records_dir(sweep_dir: str | Path, kind: str, sweep_id: str) -> Path:
    """Where the jobs of sweep ``sweep_id`` leave their records of ``kind`` (FAILURES_DIR or
    FINISHED_DIR)."""
    return Path(sweep_dir) / kind / sweep_id


def _sweep_id() -> str:
    return os.environ.get(SWEEP_ENV, "unnamed")


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
        folder = _records_dir(hc.sweep.dir, FAILURES_DIR, _sweep_id())
        write_json(folder / f"job_{hc.job.num}.json", record)
        log.error("job %s failed: %s (%s)", hc.job.num, record["error"], record["run_dir"])
        return None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------- jobs
def launcher_logs(cfg: DictConfig) -> bool:
    """Whether this job's tracking is left to the sweep's launching process: under multirun, with
    tracking on, in a sweep whose :class:`SweepCallback` runs a :class:`SweepLogger` (it says so
    in ``$BACKDOOR_STUDY_SWEEP_LOGGING``; without it, jobs log their own runs)."""
    return os.environ.get(LOGGING_ENV) == "launcher" and in_multirun() and tracking.enabled(cfg)


@contextlib.contextmanager
def tracked(
    cfg: DictConfig,
    kind: str,
    stage_dir: str | Path,
    *,
    config_digest: str,
    run_dir: str | Path | None = None,
    **start: Any,
) -> Iterator[tracking.Tracker]:
    """:func:`backdoor_study.tracking.start` for the work inside the block, except in a job whose
    launching process logs (:func:`launcher_logs`): there the tracker logs nothing and MLflow is
    never imported, and once the block has succeeded a finished record names the work
    (``kind``, ``stage_dir``, of training run ``run_dir``, default ``stage_dir``) for the
    launching process to log. A block that raises leaves no record."""
    if not launcher_logs(cfg):
        with tracking.start(cfg, kind, stage_dir, config_digest=config_digest, **start) as tracker:
            yield tracker
        return
    yield tracking.Tracker()
    record_finished(cfg, kind, stage_dir, run_dir)


def record_finished(
    cfg: DictConfig, kind: str, stage_dir: str | Path, run_dir: str | Path | None = None
) -> bool:
    """Leave the record of finished ``kind`` work in ``stage_dir`` (of training run ``run_dir``,
    default ``stage_dir``) for the launching process to log, when it logs this job's runs
    (:func:`launcher_logs`); whether a record was left."""
    if not launcher_logs(cfg):
        return False
    hc = HydraConfig.get()
    folder = _records_dir(hc.sweep.dir, FINISHED_DIR, _sweep_id())
    write_finished_record(folder, cfg, kind, stage_dir, run_dir, job=int(hc.job.num))
    return True


def write_finished_record(
    folder: Path,
    cfg: DictConfig,
    kind: str,
    stage_dir: str | Path,
    run_dir: str | Path | None = None,
    job: int | None = None,
) -> Path:
    """Write the finished record :class:`SweepLogger` reads into ``folder``. It carries the
    job's own ``tracking`` with the store the job would have logged to resolved into
    ``tracking.uri`` (``tracking.store_uri``: the training run's recorded store for later
    stages), and absolute directories (the launching process may have another cwd)."""
    stage = Path(stage_dir).resolve()
    train_dir = Path(run_dir).resolve() if run_dir is not None else stage
    runs_root = cfg.get("runs_root")
    runs_root = str(Path(runs_root).resolve()) if runs_root else None
    recorded = tracking.train_run_id(train_dir)[1] if kind != "train" else None
    try:
        uri: str | None = tracking.store_uri(cfg.tracking, runs_root, recorded)
    except tracking.TrackingError:
        uri = None  # no store known: the launching process says so, sync logs it later
    record = {
        "job": job,
        "kind": kind,
        "dir": str(stage),
        "run_dir": str(train_dir),
        "tracking": {**OmegaConf.to_container(cfg.tracking, resolve=True), "uri": uri},
        "runs_root": runs_root,
    }
    # named by what it records: a run two jobs both report (a shared clean reference, trained by
    # one and skipped by the other) is one file, written whole by each (write_json is atomic)
    return write_json(folder / f"{kind}-{sha256_json([kind, str(stage)])[:16]}.json", record)


# --------------------------------------------------------------------------------------- launcher
class SweepLogger:
    """The MLflow logging of a sweep, beside the jobs (``tracking.sweep_logging=launcher``):
    prepare the store (``config``'s), then every ``poll_s`` log the runs whose records the jobs
    left in ``folder``, each with ``sync``'s code, until :meth:`stop`. A record is deleted once
    handled.

    Where it runs: on Linux a process forked from the launching process (``process=True``, a
    :class:`_LoggerProcess`: the one :func:`prewarm` forked, else one forked by :meth:`start`),
    with its log lines relayed to the launching process's handlers. A fork inherits every module
    already imported, so it costs no start-up, and it does not share the launching process's
    GIL: with the basic launcher or joblib with one job the jobs train *in* the launching
    process, and a thread there (measured: demo preset, 1 worker, +18.6% wall) competes with
    them for the GIL instead of using the idle core. Elsewhere (no safe fork) it is a thread.

    ``elapsed_s``: seconds spent on the records (reading run directories, MLflow calls, figures;
    the store's preparation is logged on its own ``tracking-time store`` line). ``cpu_s``: the
    logger's CPU seconds, store included (and its process's imports before the settings came).
    ``error``: the exception that stopped it, if any."""

    THREAD_NAME = "sweep-logging"

    def __init__(
        self, config: DictConfig, folder: Path, poll_s: float = 0.5, process: bool | None = None
    ) -> None:
        self.config = config
        self.folder = Path(folder)
        self.poll_s = poll_s
        self.logged = 0  # MLflow runs logged
        self.already = 0  # records whose run the store held already
        self.unlogged: list[str] = []  # records that could not be logged
        self.elapsed_s = 0.0
        self.cpu_s = 0.0
        self.error: BaseException | None = None
        self.store_ok: bool | None = None  # None: not prepared yet
        self._cpu_before = 0.0  # a logger process's CPU seconds before its settings came
        self._yields = False  # in a forked logger process: it yields the cores to the jobs
        self._stores: dict[tuple[str, str], tuple[Any, str]] = {}
        self._launcher_pid = os.getpid()
        self.process = sys.platform.startswith("linux") if process is None else process
        # the logger's process: forked before Hydra composed the sweep (prewarm), else at start()
        self._proc: _LoggerProcess | None = _take_prewarmed() if self.process else None
        self._stop: Any = threading.Event()  # a process's own is its _LoggerProcess's
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
        self._relay = threading.Thread(target=self._relay_logs, daemon=True)

    @property
    def _worker(self) -> Any:
        """What logs: the logger's process, or (``process=False``) its thread."""
        return self._proc.process if self.process else self._thread

    def start(self) -> None:
        if not self.process:
            self._thread.start()
            return
        settings = (self.config, self.folder, self.poll_s, _log_levels())
        if self._proc is None or not self._proc.begin(settings):
            # no prewarmed process (or it ended meanwhile): fork one now, which inherits what
            # this process has imported
            self._proc = _LoggerProcess()
            self._proc.begin(settings)
        self._stop = self._proc.stop
        self._relay.start()

    def stop(self) -> None:
        """Log what the jobs recorded since the last pass, then end the logger; report."""
        t0 = time.perf_counter()
        self._stop.set()
        if self.process:
            self._collect()
        else:
            self._thread.join()
        waited = time.perf_counter() - t0
        left = sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []
        if self.error is not None:
            log.error(
                "MLflow logging of the sweep stopped (%s: %s); the run directories are complete: "
                "log them with `python -m backdoor_study.sync runs_root=...`",
                type(self.error).__name__,
                first_line(self.error),
            )
        if self.unlogged or left:
            log.warning(
                "%d run(s) of the sweep were not logged to MLflow; log them with "
                "`python -m backdoor_study.sync runs_root=...`",
                len(self.unlogged) + len(left),
            )
        # what the launching process spent in MLflow besides the store (benchmarks/sweep.py)
        log.info(
            "%s sweep: the launching process logged %d runs in %.3f s (%d already logged; "
            "%.3f s of CPU, store included; the sweep's end waited %.3f s for it)",
            tracking.TRACKING_TIME_LOG,
            self.logged,
            self.elapsed_s,
            self.already,
            self.cpu_s,
            waited,
        )

    # ------------------------------------------------------------------ the logger's process
    def _serve(self, proc: _LoggerProcess) -> None:
        """In the logger's process (``proc``'s): log until told to stop, then send what it did to
        the launching process."""
        self._launcher_pid, self._stop = proc.launcher_pid, proc.stop
        self._yields = True
        try:
            self._run()
        finally:
            error = self.error
            if error is not None:
                try:
                    pickle.dumps(error)
                except Exception:  # noqa: BLE001 - an exception that cannot travel: its text does
                    error = RuntimeError(f"{type(error).__name__}: {error}")
            proc.summary_out.send(
                {k: getattr(self, k) for k in _SUMMARY if k != "error"} | {"error": error}
            )
            proc.log_records.close()
            proc.log_records.join_thread()  # every log line is handed over before exiting

    def _collect(self) -> None:
        """Wait for the forked process's summary and its end, then stop relaying its log lines."""
        proc = self._proc
        summary = None
        while summary is None:
            if proc.summary.poll(0.1):
                summary = proc.summary.recv()
            elif not proc.process.is_alive():
                if proc.summary.poll(0.1):
                    continue
                break
        proc.process.join()
        proc.log_records.put(None)
        self._relay.join()
        if summary is None:
            self.error = RuntimeError(
                f"the sweep's logging process ended with exit code {proc.process.exitcode} "
                "before it reported"
            )
            return
        for key, value in summary.items():
            setattr(self, key, value)

    def _relay_logs(self) -> None:
        """In the launching process: hand the forked process's log lines to this process's
        handlers (the console, Hydra's log file; pytest's capture), as lines of this thread, so
        a run's train.log (``train._RunLog``, which keeps its own thread's lines) never takes
        them."""
        while (record := self._proc.log_records.get()) is not None:
            record.thread, record.threadName = threading.get_ident(), self.THREAD_NAME
            logging.getLogger(record.name).handle(record)

    # ------------------------------------------------------------------ the logging loop
    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            self.store_ok = tracking.prepare_store(self.config) is not None
            if not self.store_ok:  # warned: sync logs the run directories later
                return
            while True:
                stopping = self._stop.wait(self.poll_s)
                # a forked logger whose launching process was killed (no on_multirun_end) logs
                # what is there and ends, rather than polling for ever
                stopping = stopping or os.getppid() != self._launcher_pid
                self.log_records()
                if stopping:
                    return
        except Exception as e:  # noqa: BLE001 - reported by stop(); the jobs go on
            self.error = e
            log.exception("MLflow logging of the sweep failed")
        finally:
            self.cpu_s = time.thread_time() - cpu0 + self._cpu_before

    def log_records(self) -> None:
        """Log every run recorded so far (oldest first) and delete its record."""
        if not self.folder.is_dir():
            return
        paths = sorted(self.folder.glob("*.json"), key=_mtime)
        for waiting, path in zip(range(len(paths), 0, -1), paths):
            if self._yields:
                _schedule(idle=waiting < LOGGER_CATCH_UP and not self._stop.is_set())
            t0 = time.perf_counter()
            try:
                self._log(read_json(path))
            except Exception as e:  # noqa: BLE001 - one unreadable run must not stop the rest
                self.unlogged.append(str(path))
                log.warning("could not log %s to MLflow: %s: %s", path, type(e).__name__, e)
            finally:
                self.elapsed_s += time.perf_counter() - t0
                path.unlink(missing_ok=True)

    def _log(self, record: dict[str, Any]) -> None:
        from backdoor_study import sync  # not in the jobs: sync imports every stage

        holder = OmegaConf.create(
            {"tracking": record["tracking"], "runs_root": record.get("runs_root")}
        )
        uri = tracking.store_uri(holder.tracking, holder.runs_root)
        key = (uri, str(holder.tracking.experiment))
        if key not in self._stores:
            self._stores[key] = tracking.open_experiment(holder.tracking, uri)
        logged, already = sync.log_run_dir(
            holder, Path(record["run_dir"]), self._stores[key], (record["kind"], record["dir"])
        )
        if logged + already == 0:
            raise FileNotFoundError(f"{record['dir']}: no finished {record['kind']} run there")
        self.logged += logged
        self.already += already


# What the forked logger sends back to the launching process.
_SUMMARY = ("logged", "already", "unlogged", "elapsed_s", "cpu_s", "error", "store_ok")


class _LoggerProcess:
    """The process a :class:`SweepLogger` logs from (Linux), and its channels to the launching
    process. Forked at once, it imports what logging needs (a process forked early, by
    :func:`prewarm`, does so while Hydra composes the sweep), then waits for the logger's
    settings (:meth:`begin`) and logs; it ends when told to (None, :meth:`dismiss`), or when the
    launching process is gone."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.launcher_pid = os.getpid()
        self.go_in, self.go = ctx.Pipe(duplex=False)  # the settings, or None: not needed
        self.stop = ctx.Event()
        self.summary, self.summary_out = ctx.Pipe(duplex=False)
        self.log_records = ctx.Queue()
        # daemon: an interrupted sweep (no on_multirun_end) does not wait on it at exit; a run
        # left half-logged is completed by the next sweep or sync (logging is idempotent)
        self.process = ctx.Process(target=self._main, name=SweepLogger.THREAD_NAME, daemon=True)
        self.process.start()
        self.go_in.close()  # the child's end: a child that is gone makes send() fail here

    def begin(self, settings: tuple) -> bool:
        """Hand the process its logger's settings; False when it has ended."""
        try:
            self.go.send(settings)
        except OSError as e:
            log.debug("sweep logger process gone (%s)", e)
            return False
        self.go.close()
        return True

    def dismiss(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.go.send(None)
            self.go.close()
        self.process.join(timeout=5)

    def _main(self) -> None:
        """The forked process."""
        self.go.close()  # the launching process's end
        _after_fork(self.log_records)
        # below the jobs in the scheduler's order: where every core trains, logging takes the
        # idle moments (a job starting, waiting on a lock) rather than a share of the training;
        # an idle core it uses at full speed. log_records raises it again when runs pile up.
        _schedule(idle=True)
        cpu0 = time.thread_time()
        try:
            _import_logging_modules()
        except Exception:  # noqa: BLE001 - imported again where used, and reported there
            pass
        # what the imports made lives as long as the process: out of the collector's way, so a
        # full collection no longer walks MLflow's, SQLAlchemy's and matplotlib's modules
        # (measured: 83 -> 75 ms of CPU per logged demo run)
        gc.freeze()
        imports_cpu_s = time.thread_time() - cpu0
        while not self.go_in.poll(0.5):
            if os.getppid() != self.launcher_pid:
                return
        try:
            settings = self.go_in.recv()
        except EOFError:
            return
        if settings is None:
            return
        config, folder, poll_s, levels = settings
        for name, level in levels.items():  # as the launching process has set them since
            logging.getLogger(name or None).setLevel(level)
        logger = SweepLogger(config, folder, poll_s, process=False)
        logger._cpu_before = imports_cpu_s
        logger._serve(self)


_prewarmed: _LoggerProcess | None = None


def prewarm(argv: list[str]) -> bool:
    """Fork the sweep's logger before Hydra composes a multirun (from an entry point, ``argv`` its
    command line), so that importing MLflow, its store's models and matplotlib (~1.4 s of CPU)
    happens while the launching process composes the sweep on one core and the other is idle,
    not later beside the training jobs. :class:`SweepLogger` adopts it; a sweep that does not
    log from the launcher dismisses it (``on_multirun_start``), and it ends by itself if the
    launching process is gone. Linux only (a fork), and only where the command line asks for a
    multirun and does not turn tracking off or over to the jobs; whether one was forked."""
    global _prewarmed
    multirun = any(a in ("-m", "--multirun") for a in argv)
    off = {"tracking=none", "tracking.sweep_logging=jobs", "tracking.name=none"}
    if (
        _prewarmed is not None
        or not multirun
        or not sys.platform.startswith("linux")
        or any(a in off for a in argv)
        or os.environ.get(tracking.TRACKING_ENV, "").lower() == "none"
    ):
        return False
    _prewarmed = _LoggerProcess()
    return True


def _log_levels() -> dict[str, int]:
    """The levels set on this process's loggers ("" the root)."""
    levels = {"": logging.getLogger().level}
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


def _take_prewarmed() -> _LoggerProcess | None:
    """The prewarmed logger process for this sweep (once), if it is still waiting."""
    global _prewarmed
    warm, _prewarmed = _prewarmed, None
    if warm is None or warm.launcher_pid != os.getpid() or not warm.process.is_alive():
        return None
    return warm


def dismiss_prewarmed() -> None:
    """End a prewarmed logger process that this sweep does not need."""
    warm = _take_prewarmed()
    if warm is not None:
        warm.dismiss()


def _schedule(idle: bool) -> None:
    """Put the calling thread (the sweep's forked logger) under ``SCHED_IDLE`` (it runs only
    where a core would otherwise idle) or back under the normal policy at its own niceness. An
    idle logger that fell behind would leave a backlog for the sweep's end; this one is raised
    as soon as ``LOGGER_CATCH_UP`` runs wait, and the rest of its CPU is taken from the jobs
    while they run. Going back needs CAP_SYS_NICE or an RLIMIT_NICE that allows the thread's
    niceness, which an ordinary user usually lacks (the way there needs none): there the logger
    stays idle, and logs what it could not log during the sweep at its end. A logger at the
    jobs' priority throughout cost more (demo preset, 2 workers: +8.6% of the sweep's wall
    time against +6.0 to +7.0%, run 9 of ``docs/results_sweeps.md``). Linux; a no-op where
    the policy cannot be set."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    with contextlib.suppress(OSError):
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, os.sched_param(0))


def _import_logging_modules() -> None:
    """What the sweep's logger imports to log a run (MLflow, its SQL store, matplotlib, sync)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.tracking  # noqa: F401
    import sklearn.metrics  # noqa: F401

    from backdoor_study import sync  # noqa: F401


def _after_fork(log_records: Any) -> None:
    """First steps of the forked logger: its log lines go to ``log_records`` (the launching
    process prints them), and database connections pooled before the fork are dropped without
    being closed (SQLAlchemy's rule for a forked child: they belong to the parent)."""
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(log_records)]
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.handlers:
            logger.handlers = []  # no line written twice: the launching process's handlers do
    store_module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store_module is not None:
        for engine in list(store_module.SqlAlchemyStore._engine_map.values()):
            engine.dispose(close=False)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _check_tracking(config: DictConfig) -> None:
    """Run the tracking schema's checks (``tracking.sweep_logging`` among them) before any job
    starts: a bad value is one line and exit status 1, not the same error in every job."""
    node = OmegaConf.select(config, "tracking")
    if node is None:
        return
    try:
        OmegaConf.to_object(node)
    except ConfigError as e:
        app = OmegaConf.select(config, "hydra.help.app_name", default="backdoor_study")
        print(f"{app}: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


class SweepCallback(Callback):
    """Once per sweep, in the launching process: set up tracking (the store, and with
    ``tracking.sweep_logging=launcher`` the logger of the jobs' runs), then report."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_tracking(config)
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        # The environment reaches joblib/loky workers, submitit subprocesses and SLURM jobs.
        os.environ[SWEEP_ENV] = sweep_id
        self.started = time.time()
        self.logger: SweepLogger | None = None
        if tracking.enabled(config) and config.tracking.get("sweep_logging") == "launcher":
            folder = _records_dir(config.hydra.sweep.dir, FINISHED_DIR, sweep_id)
            self.logger = SweepLogger(config, folder)
            os.environ[LOGGING_ENV] = "launcher"
            self.logger.start()  # prepares the store while the first jobs start
        else:
            dismiss_prewarmed()
            tracking.prepare_store(config)

    def __getstate__(self) -> dict[str, Any]:
        # joblib sends the callbacks to its workers with every job: the logger stays here
        return {k: v for k, v in self.__dict__.items() if k != "logger"}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = os.environ.pop(SWEEP_ENV, "unnamed")
        os.environ.pop(LOGGING_ENV, None)
        if getattr(self, "logger", None) is not None:
            self.logger.stop()
        _remove_records(_records_dir(config.hydra.sweep.dir, FINISHED_DIR, sweep_id))
        records = _remove_records(_records_dir(config.hydra.sweep.dir, FAILURES_DIR, sweep_id))
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


def _remove_records(folder: Path) -> list[dict[str, Any]]:
    """The records in ``folder``, which is removed (and its parent, once empty)."""
    if not folder.is_dir():
        return []
    paths = sorted(folder.glob("*.json"))
    records = [read_json(p) for p in paths]
    for p in paths:
        p.unlink()
    with contextlib.suppress(OSError):  # a temporary file of a record being written: left
        folder.rmdir()
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()
    return records
