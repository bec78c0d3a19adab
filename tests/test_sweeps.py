"""Hydra multirun sweeps from the command line: parallel jobs, one MLflow run each, restartable by
running the same command again, and a failed job that fails alone and is reported. Under
``tracking.sweep_logging=launcher`` (the default) the jobs never import MLflow: the launching
process logs their runs, the same MLflow runs as jobs logging live (``jobs``)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from backdoor_study import rundir, tracking
from backdoor_study.data.schema import write_parquet
from tests.conftest import REPO_ROOT, make_tiny_dataset
from tests.sweep_probe import imported, probed


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    write_parquet(make_tiny_dataset(n=300, t=12, seed=3), path)
    return path


def sweep(runs_root: Path, cohort: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (tracking.TRACKING_ENV, "MLFLOW_TRACKING_URI")
    }
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    args = [
        "-m",
        "data=parquet",
        f"data.path={cohort}",
        f"runs_root={runs_root}",
        "epochs=2",
        "trainer.progress=false",
        "metrics.bootstrap=0",
        *overrides,
    ]
    return subprocess.run(
        [sys.executable, "-m", "backdoor_study.train", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def mlflow_runs(runs_root: Path) -> list:
    client = MlflowClient(f"sqlite:///{runs_root / tracking.STORE_FILE}")
    exp = client.get_experiment_by_name("backdoor_study")
    return client.search_runs([exp.experiment_id])


def logged(runs_root: Path) -> dict[str, dict]:
    """What the store holds of each run, by run name, as a user compares runs: params, tags,
    every metric's (step, value) history, artifacts, dataset inputs (``runs_root`` -> ROOT; epoch
    wall times, which no two runs share, left out)."""
    client = MlflowClient(f"sqlite:///{runs_root / tracking.STORE_FILE}")
    out = {}
    for run in mlflow_runs(runs_root):
        rid = run.info.run_id
        history = {
            key: sorted(
                (m.step, "nan" if math.isnan(m.value) else m.value)
                for m in client.get_metric_history(rid, key)
            )
            for key in run.data.metrics
            if key != "seconds"
        }
        out[run.info.run_name] = {
            "status": run.info.status,
            "params": run.data.params,
            "tags": {k: v.replace(str(runs_root), "ROOT") for k, v in run.data.tags.items()},
            "metrics": history,
            "artifacts": sorted(
                a.path for d in (None, "figures") for a in client.list_artifacts(rid, d)
            ),
            "inputs": [
                (i.dataset.name, i.dataset.digest, i.dataset.source, sorted(map(str, i.tags)))
                for i in run.inputs.dataset_inputs
            ],
        }
    return out


@pytest.mark.slow  # two 4-job sweeps in worker processes: minutes on 2 cores
def test_joblib_sweep_one_mlflow_run_per_job_and_a_rerun_resumes_adding_none(cohort, tmp_path):
    grid = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp,lstm", "seed=1,2"]
    out = sweep(tmp_path, cohort, *grid)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = rundir.find_run_dirs(tmp_path)
    assert len(runs) == 4
    first = mlflow_runs(tmp_path)  # one store, created before anything logged to it
    assert len(first) == 4 and all(r.info.status == "FINISHED" for r in first)
    assert {r.data.tags["backdoor_study.run_dir"] for r in first} == {str(p) for p in runs}

    # an interrupted run (killed after epoch 1) is resumed, the others are skipped
    crashed = tmp_path / "lstm" / "none" / "0.0" / "seed_2"
    for name in ("metrics.json", "final_model.pt", "checkpoint_epoch_2.pt"):
        (crashed / name).unlink()
    again = sweep(tmp_path, cohort, *grid)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skipped (already complete)") == 3
    assert (crashed / "metrics.json").exists()
    resumed_from = json.loads((crashed / "run_metadata.json").read_text())["resumed_from"]
    assert resumed_from.endswith("checkpoint_epoch_1.pt")  # resumed, not restarted
    second = mlflow_runs(tmp_path)
    assert sorted(r.info.run_id for r in second) == sorted(r.info.run_id for r in first)


def test_a_failed_job_fails_alone_and_is_listed_at_the_end(cohort, tmp_path):
    out = sweep(tmp_path, cohort, "tracking=none", "seed=1", "epochs=2,0", "model=mlp")
    assert out.returncode == 1
    assert "1 job(s) of the sweep failed" in out.stdout
    bad = tmp_path / "mlp" / "none" / "0.0" / "seed_1"
    assert f"job 1: {bad}: ConfigError: epochs=0 is invalid: expected an integer >= 1" in out.stdout
    assert (bad / "metrics.json").exists()  # job 0 (epochs=2, the same directory) completed
    assert not (tmp_path / tracking.STORE_FILE).exists()


@pytest.mark.slow  # two parallel jobs in worker processes
def test_parallel_jobs_sharing_a_clean_reference_train_it_once(cohort, tmp_path):
    out = sweep(
        tmp_path,
        cohort,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "tracking=none",
        "trigger=rare_value",
        "trigger.window=[6,12]",
        "poison_rate=0.01,0.05",
        "clean_reference=true",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    reference = tmp_path / "mlp" / "rare_value" / "0.0" / "seed_42"
    assert set(rundir.find_run_dirs(tmp_path)) == {
        reference,
        tmp_path / "mlp" / "rare_value" / "0.01" / "seed_42",
        tmp_path / "mlp" / "rare_value" / "0.05" / "seed_42",
    }
    assert (reference / "train.log").read_text().count("run complete:") == 1  # trained once
    asr = {
        json.loads((p / "metrics.json").read_text())["ASR_clean_model"]
        for p in rundir.find_run_dirs(tmp_path)
        if p != reference
    }
    assert asr == {json.loads((reference / "metrics.json").read_text())["ASR"]}


@pytest.mark.slow  # three 4-job sweeps in worker processes
def test_launcher_logging_keeps_mlflow_out_of_the_jobs_and_logs_what_jobs_would(cohort, tmp_path):
    grid = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp,lstm", "seed=1,2"]
    root = tmp_path / "launcher"
    out = sweep(root, cohort, *grid, *probed(tmp_path / "probe-launcher"))
    assert out.returncode == 0, out.stdout + out.stderr
    runs = rundir.find_run_dirs(root)
    assert len(runs) == 4
    jobs = imported(tmp_path / "probe-launcher")
    assert sorted(jobs) == [0, 1, 2, 3] and all(m == [] for m in jobs.values())  # no MLflow
    for run_dir in runs:
        assert "tracking-time" not in (run_dir / "train.log").read_text()
    assert "tracking-time sweep: the launching process logged 4 runs in" in out.stdout
    assert not (root / ".sweep_finished").exists()
    by_launcher = logged(root)
    assert len(by_launcher) == 4 and all(r["status"] == "FINISHED" for r in by_launcher.values())
    for run in mlflow_runs(root):
        run_dir = Path(run.data.tags["backdoor_study.run_dir"])
        meta = json.loads((run_dir / "run_metadata.json").read_text())
        assert meta["mlflow"]["run_id"] == run.info.run_id
        logged_run = by_launcher[run.info.run_name]
        assert [step for step, _ in logged_run["metrics"]["val_auroc"]] == [1, 2]
        assert {"config_resolved.yaml", "history.csv", "figures/confusion_matrices.svg"} <= set(
            logged_run["artifacts"]
        )
        assert len(logged_run["inputs"]) == 1

    # each job logging its own run: MLflow imported in every worker, the same MLflow runs
    out = sweep(
        tmp_path / "jobs", cohort, *grid, "tracking.sweep_logging=jobs",
        *probed(tmp_path / "probe-jobs"),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert all("mlflow" in m for m in imported(tmp_path / "probe-jobs").values())
    assert "tracking-time sweep" not in out.stdout
    by_jobs = logged(tmp_path / "jobs")
    assert sorted(by_jobs) == sorted(by_launcher)
    for name, run in by_launcher.items():
        assert run == by_jobs[name], name

    first = sorted(r.info.run_id for r in mlflow_runs(root))
    again = sweep(root, cohort, *grid)  # all skipped: nothing new in the store
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("skipped (already complete)") == 4
    assert re.search(r"logged 0 runs in [0-9.]+ s \(4 already logged;", again.stdout)
    assert sorted(r.info.run_id for r in mlflow_runs(root)) == first


@pytest.mark.slow  # imports MLflow and makes a store
def test_under_launcher_logging_a_failed_job_is_reported_and_logs_nothing(cohort, tmp_path):
    (tmp_path / "cohort_1.parquet").write_bytes(cohort.read_bytes())
    (tmp_path / "cohort_2.parquet").write_text("not a parquet file")  # fails while training
    out = sweep(tmp_path, cohort, "seed=1,2", f"data.path='{tmp_path}/cohort_${{seed}}.parquet'")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 job(s) of the sweep failed" in out.stdout
    assert f"job 1: {tmp_path}/mlp/none/0.0/seed_2: " in out.stdout
    assert "the launching process logged 1 runs in" in out.stdout
    assert "not logged" not in out.stdout + out.stderr
    (run,) = mlflow_runs(tmp_path)
    assert run.info.run_name == "mlp-none-0.0-s1" and run.info.status == "FINISHED"
    assert not (tmp_path / ".sweep_finished").exists()


ORPHAN = """
import os, sys, time
from pathlib import Path
from omegaconf import OmegaConf
from backdoor_study import sweep
root, how = Path(sys.argv[1]), sys.argv[2]
tracking = {"name": "mlflow", "uri": f"sqlite:///{root}/mlflow.db", "experiment": "orphan",
            "log_model": False, "http_timeout_s": 10, "http_retries": 1,
            "sweep_logging": "launcher"}
if how != "forked":
    assert sweep.prewarm(["-m", "seed=1,2"])
if how == "prewarmed, never adopted":  # killed while Hydra composes the sweep
    print(sweep._prewarmed.process.pid, flush=True)
else:
    logger = sweep.SweepLogger(OmegaConf.create({"tracking": tracking, "runs_root": str(root)}),
                               root / "records", poll_s=0.1, process=True)
    logger.start()
    print(logger._worker.pid, flush=True)
time.sleep(0.5)
os._exit(0)  # killed: no on_multirun_end, no atexit
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forked logger is Linux's")
@pytest.mark.parametrize("how", ["forked", "prewarmed", "prewarmed, never adopted"])
def test_a_forked_logger_ends_when_its_launching_process_is_killed(tmp_path, how):
    """An interrupted sweep must not leave its logger polling (or a prewarmed logger waiting
    for its settings) for ever."""
    import time

    env = {k: v for k, v in os.environ.items() if k != tracking.TRACKING_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(tmp_path), how],
        cwd=REPO_ROOT,
        env=env | {"MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pid = int(proc.stdout.readline())
    proc.wait(timeout=60)
    proc.stdout.close()  # the orphan holds the pipe's other end: never read to its end
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return
        if state in ("Z", "X"):  # ended, waiting to be reaped by whoever adopted it
            return
        time.sleep(0.2)
    os.kill(pid, 9)
    pytest.fail(f"the forked logger (pid {pid}) outlived its launching process by 30 s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forked logger is Linux's")
def test_the_sweep_logger_is_prewarmed_only_for_a_tracked_multirun_and_dismissed_unused(
    monkeypatch,
):
    """sweep_mod.prewarm forks only where the command line asks for a multirun that the launching
    process logs; a sweep that does not use it (here: jobs logging) ends it at its start."""
    from backdoor_study import sweep as sweep_mod

    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)
    for argv in (
        ["model=mlp"],  # a single run
        ["-m", "seed=1,2", "tracking=none"],
        ["--multirun", "seed=1,2", "tracking.sweep_logging=jobs"],
    ):
        assert not sweep_mod.prewarm(argv), argv
    monkeypatch.setenv(tracking.TRACKING_ENV, "none")
    assert not sweep_mod.prewarm(["-m", "seed=1,2"])
    monkeypatch.delenv(tracking.TRACKING_ENV)
    assert sweep_mod.prewarm(["--multirun", "seed=1,2"])
    assert not sweep_mod.prewarm(["--multirun", "seed=1,2"])  # one per launching process
    warm = sweep_mod._prewarmed.process
    assert warm.is_alive()
    sweep_mod.dismiss_prewarmed()
    assert sweep_mod._prewarmed is None and not warm.is_alive() and warm.exitcode == 0


def _may_leave_idle() -> bool:
    """Whether this process may leave SCHED_IDLE: CAP_SYS_NICE, or an RLIMIT_NICE that allows
    its niceness (Linux's rule for unprivileged threads)."""
    import resource

    status = Path("/proc/self/status").read_text().splitlines()
    cap_eff = int(next(line.split()[1] for line in status if line.startswith("CapEff")), 16)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    return bool(cap_eff >> 23 & 1) or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_schedule_moves_a_thread_to_idle_and_back_where_that_is_allowed():
    """What the forked logger does to itself (in a thread here: a policy is per thread, so the
    test process keeps its own). SCHED_IDLE needs no privilege; the way back needs CAP_SYS_NICE
    or an RLIMIT_NICE that allows it, which an ordinary user usually lacks: there the logger
    stays idle, and logs what is left at the sweep's end."""
    import threading

    from backdoor_study import sweep as sweep_mod

    seen: list[int] = []

    def moves() -> None:
        sweep_mod._schedule(idle=True)
        seen.append(os.sched_getscheduler(0))
        sweep_mod._schedule(idle=False)  # a no-op where it is not allowed
        seen.append(os.sched_getscheduler(0))

    thread = threading.Thread(target=moves)
    thread.start()
    thread.join()
    back = os.SCHED_OTHER if _may_leave_idle() else os.SCHED_IDLE
    assert seen == [os.SCHED_IDLE, back]


@pytest.mark.parametrize("stopping", [False, True])
def test_a_forked_logger_yields_only_while_it_keeps_up(tmp_path, monkeypatch, stopping):
    """With LOGGER_CATCH_UP (2) or more runs waiting, or once the sweep has ended, the logger
    runs at the jobs' priority; with one run waiting it takes only idle cores. A logger that is
    not a forked process (a thread) never touches the scheduling."""
    from omegaconf import OmegaConf

    from backdoor_study import sweep as sweep_mod

    calls: list[bool] = []
    monkeypatch.setattr(sweep_mod, "_schedule", lambda idle: calls.append(idle))
    folder = tmp_path / "records"
    folder.mkdir()
    logged: list[str] = []
    for yields in (True, False):
        for i in range(3):
            path = folder / f"{i}.json"
            path.write_text(json.dumps({"i": i}))
            os.utime(path, (1000 + i, 1000 + i))  # oldest first: 0, 1, 2
        logger = sweep_mod.SweepLogger(OmegaConf.create({}), folder, process=False)
        logger._yields = yields
        if stopping:
            logger._stop.set()
        monkeypatch.setattr(logger, "_log", lambda record: logged.append(record["i"]))
        logger.log_records()
    assert logged == [0, 1, 2, 0, 1, 2]
    assert calls == ([False, False, False] if stopping else [False, False, True])
