"""MLflow tracking as a user relies on it: one MLflow run per run directory, linked both ways,
nothing lost when the store is unusable, ``sync`` idempotent, ``tracking=none`` silent."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from backdoor_study import eval as eval_mod
from backdoor_study import rundir, sync, tracking, train
from backdoor_study.config import CONF_DIR
from backdoor_study.data.schema import write_parquet
from tests.conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    write_parquet(make_tiny_dataset(n=300, t=12, seed=3), path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module: creating a fresh one takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def tracking_on(monkeypatch):
    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)


def make_cfg(name: str, cohort: Path, runs_root: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            name,
            overrides=[
                *(
                    [
                        "data=parquet",
                        f"data.path={cohort}",
                        f"runs_root={runs_root}",
                        "epochs=2",
                        "trainer.progress=false",
                        "metrics.bootstrap=0",
                        "clean_reference=false",
                        "trigger.window=[6,12]",
                    ]
                    if name == "train"
                    else []
                ),
                *overrides,
            ],
        )


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_train_and_eval_are_logged_once_and_linked(cohort, store, tmp_path, tracking_on, caplog):
    caplog.set_level(logging.INFO, logger="backdoor_study")  # as under the CLI's job logging
    cfg = make_cfg(
        "train",
        cohort,
        tmp_path,
        "trigger=rare_value",
        "poison_rate=0.05",
        f"tracking.uri={store}",
        "tracking.experiment=linked",
    )
    metrics = train.run(cfg)
    run_dir = Path(cfg.run_dir)
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    (only,) = runs_of(store, "linked")
    assert meta["mlflow"]["run_id"] == only.info.run_id  # run dir -> MLflow run
    tags = only.data.tags
    assert tags["backdoor_study.run_dir"] == str(run_dir.resolve())  # MLflow run -> run dir
    assert only.info.run_name == "mlp-rare_value-0.05-s42" and only.info.status == "FINISHED"
    assert (tags["model"], tags["trigger"], tags["poison_rate"], tags["seed"]) == (
        "mlp",
        "rare_value",
        "0.05",
        "42",
    )
    assert tags["data_digest"] == meta["data"]["digest"]
    assert tags["git_commit"] == str(meta["environment"]["git"]["commit"])
    assert only.data.params["model.hidden_sizes"] == "[128, 64]"
    assert only.data.metrics["ASR"] == pytest.approx(metrics["ASR"])
    client = MlflowClient(store)
    history = client.get_metric_history(only.info.run_id, "val_auroc")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(only.info.run_id)}
    assert {"config_resolved.yaml", "run_metadata.json", "experiment_summary.csv"} <= artifacts
    figures = {a.path for a in client.list_artifacts(only.info.run_id, "figures")}
    assert figures == {"figures/confusion_matrices.svg"}  # clean and triggered test set
    (data_input,) = only.inputs.dataset_inputs
    assert data_input.dataset.digest == meta["data"]["digest"][:36]
    assert {t.key: t.value for t in data_input.tags}["backdoor_study.data_digest"] == (
        meta["data"]["digest"]
    )

    # what tracking cost the run is in its train.log (benchmarks/sweep.py sums these lines)
    (line,) = [
        t for t in (run_dir / "train.log").read_text().splitlines() if "tracking-time train" in t
    ]
    assert 0.0 < float(line.split("took ")[1].split(" s")[0]) < 60.0

    assert train.run(cfg)["skipped"]  # a skipped run adds no MLflow run
    assert len(runs_of(store, "linked")) == 1

    ecfg = make_cfg(
        "eval", cohort, tmp_path, f"run_dir={run_dir}", "device=cpu", "tracking.experiment=linked"
    )
    assert eval_mod.run(ecfg)["matches_train"]  # the store recorded by train is found
    ev = next(r for r in runs_of(store, "linked") if r.data.tags["backdoor_study.kind"] == "eval")
    assert ev.data.tags["mlflow.parentRunId"] == only.info.run_id
    assert ev.data.metrics["matches_train"] == 1.0

    # sync finds the one run directory (not the artifact copies in the store) and adds nothing
    scfg = make_cfg("sync", cohort, tmp_path, f"runs_root={tmp_path}", "tracking.experiment=linked")
    scfg.tracking.uri = store
    assert sync.run(scfg) == {"run_dirs": 1, "logged": 0, "already_logged": 2}
    assert len(runs_of(store, "linked")) == 2


def test_sync_logs_untracked_runs_once(cohort, store, tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.TRACKING_ENV, "none")  # made while tracking was off
    for seed in (1, 2):
        train.run(make_cfg("train", cohort, tmp_path, f"seed={seed}"))
    monkeypatch.delenv(tracking.TRACKING_ENV)
    scfg = make_cfg(
        "sync",
        cohort,
        tmp_path,
        f"runs_root={tmp_path}",
        f"tracking.uri={store}",
        "tracking.experiment=synced",
    )
    assert sync.run(scfg) == {"run_dirs": 2, "logged": 2, "already_logged": 0}
    assert sync.run(scfg) == {"run_dirs": 2, "logged": 0, "already_logged": 2}
    runs = runs_of(store, "synced")
    assert sorted(r.info.run_name for r in runs) == ["mlp-none-0.0-s1", "mlp-none-0.0-s2"]
    assert all(len(r.data.params) > 20 for r in runs)


def test_tracking_none_writes_nothing(cohort, tmp_path, tracking_on):
    cfg = make_cfg("train", cohort, tmp_path, "tracking=none")
    train.run(cfg)
    assert not (tmp_path / tracking.STORE_FILE).exists()
    assert not (tmp_path / tracking.ARTIFACTS_DIR).exists()
    assert "mlflow" not in json.loads((Path(cfg.run_dir) / "run_metadata.json").read_text())


def test_unusable_store_still_leaves_a_complete_run(cohort, tmp_path, tracking_on, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's directory should be")
    cfg = make_cfg(
        "train", cohort, tmp_path / "runs", f"tracking.uri=sqlite:///{blocker}/mlflow.db"
    )
    with caplog.at_level(logging.WARNING, logger="backdoor_study.tracking"):
        metrics = train.run(cfg)
    run_dir = Path(cfg.run_dir)
    assert (run_dir / "metrics.json").exists() and (run_dir / "final_model.pt").exists()
    assert (
        json.loads((run_dir / "metrics.json").read_text())["auroc_clean"] == metrics["auroc_clean"]
    )
    assert "mlflow" not in json.loads((run_dir / "run_metadata.json").read_text())
    assert "MLflow tracking unavailable" in caplog.text and "backdoor_study.sync" in caplog.text


def test_bad_tracking_value_names_the_key(cohort, tmp_path):
    from backdoor_study.config import ConfigError

    with pytest.raises(ConfigError, match=r"tracking.http_retries=-1 is invalid"):
        train.run(make_cfg("train", cohort, tmp_path, "tracking.http_retries=-1"))


def test_detect_and_sanitize_are_children_of_the_training_run(cohort, store, tmp_path, tracking_on):
    from backdoor_study import sanitize

    cfg = make_cfg(
        "train",
        cohort,
        tmp_path,
        "trigger=rare_value",
        "poison_rate=0.05",
        f"tracking.uri={store}",
        "tracking.experiment=stages",
    )
    train.run(cfg)
    scfg = make_cfg(
        "sanitize",
        cohort,
        tmp_path,
        f"run_dir={cfg.run_dir}",
        "detector=spectral",
        "device=cpu",
        "progress=false",
        "tracking.experiment=stages",
    )
    result = sanitize.run(scfg)
    runs = {r.data.tags["backdoor_study.kind"]: r for r in runs_of(store, "stages")}
    kinds = sorted(r.data.tags["backdoor_study.kind"] for r in runs_of(store, "stages"))
    assert kinds == ["detect", "sanitize", "train", "train"]  # the retrain is a training run
    trained = json.loads((Path(cfg.run_dir) / "run_metadata.json").read_text())["mlflow"]["run_id"]
    for kind in ("detect", "sanitize"):
        assert runs[kind].data.tags["mlflow.parentRunId"] == trained
        assert runs[kind].data.tags["trigger"] == "rare_value"
    assert runs["sanitize"].data.metrics["after.ASR"] == pytest.approx(result["after"]["ASR"])
    assert "auroc" in runs["detect"].data.metrics

    assert sanitize.run(scfg)["skipped"]  # skipped: no new MLflow runs
    sync_cfg = make_cfg(
        "sync", cohort, tmp_path, f"runs_root={tmp_path}", "tracking.experiment=stages"
    )
    sync_cfg.tracking.uri = store
    assert sync.run(sync_cfg)["logged"] == 0
    assert len(runs_of(store, "stages")) == 4


def test_a_new_store_is_a_copy_of_the_cached_empty_one(tmp_path, monkeypatch, tracking_on):
    """The first store made on a machine leaves an empty template in the cache; later stores are
    copies of it (no schema migrations run) and behave as stores MLflow made itself."""
    from mlflow.store.db import utils as db_utils

    monkeypatch.setenv(tracking.CACHE_ENV, str(tmp_path / "cache"))
    cfg = make_cfg("sync", tmp_path, tmp_path, f"runs_root={tmp_path / 'first'}")
    assert tracking.prepare_store(cfg) is not None
    (template,) = (tmp_path / "cache").glob("mlflow-*-empty.db")

    def no_migrations(engine):
        raise AssertionError("the store should have been copied, not built")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    second = tmp_path / "second"
    cfg.runs_root = str(second)
    cfg.tracking.experiment = "other"
    experiment_id = tracking.prepare_store(cfg)
    client = MlflowClient(f"sqlite:///{second / tracking.STORE_FILE}")
    exp = client.get_experiment(experiment_id)
    assert exp.name == "other"
    assert exp.artifact_location == (second / tracking.ARTIFACTS_DIR).resolve().as_uri()
    assert client.get_experiment("0").name == "Default"  # added by MLflow on opening the copy
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    with sqlite3.connect(template) as db:  # the template itself stays empty
        assert db.execute("select count(*) from experiments").fetchone() == (0,)
        assert db.execute("select count(*) from runs").fetchone() == (0,)


def test_an_unwritable_cache_leaves_mlflow_to_build_the_store(tmp_path, monkeypatch, tracking_on):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv(tracking.CACHE_ENV, str(blocker / "cache"))
    cfg = make_cfg("sync", tmp_path, tmp_path, f"runs_root={tmp_path / 'runs'}")
    experiment_id = tracking.prepare_store(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / tracking.STORE_FILE}")
    assert client.get_experiment(experiment_id).name == cfg.tracking.experiment
    assert not list((tmp_path / "runs").glob(".*.tmp"))  # no copy left behind


def test_a_tracked_run_is_written_in_few_transactions(cohort, store, tmp_path, tracking_on):
    """Params at the start (a running run shows its config), then tags and every metric in one
    batch: each log_batch is a database transaction, and per-run cost is what sweeps pay."""
    calls = []
    original = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append((len(metrics), len(params), len(tags)))
        return original(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    cfg = make_cfg(
        "train", cohort, tmp_path, "trigger=rare_value", "poison_rate=0.05",
        f"tracking.uri={store}", "tracking.experiment=batched",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MlflowClient, "log_batch", counting)
        train.run(cfg)
    (run,) = runs_of(store, "batched")
    n_params, n_metrics = len(run.data.params), len(run.data.metrics)
    assert sum(c[1] for c in calls) == n_params
    assert len(calls) == -(-n_params // tracking.MAX_PARAMS_PER_BATCH) + 1  # params, then the rest
    metrics, _, tags = calls[-1]
    assert tags >= 9 and metrics >= n_metrics  # every epoch's and the final metrics at once


def test_eval_tracking_time_counts_each_second_once(tmp_path, monkeypatch):
    """log_eval_run is log_stage_run: the seconds it spends are added to the tracker once."""
    run_cfg = {"model": {"name": "mlp"}, "trigger": {"name": "rare_value"}, "seed": 1}
    run_cfg |= {"attack": {"name": "backdoor"}, "poison_rate": 0.05, "data": {"name": "parquet"}}
    OmegaConf.save(OmegaConf.create(run_cfg), tmp_path / rundir.RESOLVED_CONFIG_FILE)
    (tmp_path / rundir.METADATA_FILE).write_text("{}")
    clock = iter(range(100))  # every reading of the clock is one second later
    monkeypatch.setattr(
        tracking, "time", SimpleNamespace(perf_counter=lambda: float(next(clock)), time=time.time)
    )
    tracker = tracking.Tracker()
    tracker.run_id = "run"
    tracking.log_eval_run(tracker, tmp_path, {"metrics": {"ASR": 0.5}}, tmp_path / "eval.json")
    assert tracker.elapsed_s == 1.0  # one timed span (two readings), not one inside another


# --------------------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize(
    "process",
    [
        True,
        False,
        *(
            pytest.param(
                how,
                marks=pytest.mark.skipif(
                    not sys.platform.startswith("linux"), reason="the forked logger is Linux's"
                ),
            )
            for how in ("prewarmed", "prewarmed, gone before the sweep")
        ),
    ],
    ids=["forked process", "thread", "prewarmed process", "prewarmed process gone"],
)
def test_the_launching_process_logs_recorded_runs_as_train_and_eval_would(
    cohort, store, tmp_path, monkeypatch, caplog, process
):
    """tracking.sweep_logging=launcher: jobs leave records, the launching process's SweepLogger
    (a forked process on Linux, a thread elsewhere; or the process forked before Hydra composed
    the sweep, sweep.prewarm) logs each recorded run (here a training run and its eval, the eval
    a child of the training run) with sync's code; the same records again add nothing. The
    forked logger's counts and log lines reach the launching process."""
    from backdoor_study import sweep

    # the store is the module's
    names = {True: "process", False: "thread", "prewarmed": "prewarmed"}
    experiment = f"launcher-{names.get(process, 'prewarmed-gone')}"
    cfg = make_cfg(
        "train", cohort, tmp_path, "trigger=rare_value", "poison_rate=0.05",
        f"tracking.uri={store}", f"tracking.experiment={experiment}",
    )  # fmt: skip
    train.run(cfg)  # tracking is off (BACKDOOR_STUDY_TRACKING=none): the jobs' side
    run_dir = Path(cfg.run_dir)
    ecfg = make_cfg("eval", cohort, tmp_path, f"run_dir={run_dir}", "device=cpu")
    eval_mod.run(ecfg)
    monkeypatch.delenv(tracking.TRACKING_ENV)
    folder = tmp_path / ".sweep_finished" / "sweep-1"
    sweep.write_finished_record(folder, cfg, "train", run_dir, job=0)
    sweep.write_finished_record(folder, cfg, "eval", run_dir, job=0)
    assert len(list(folder.glob("*.json"))) == 2

    caplog.set_level(logging.INFO, logger="backdoor_study")
    warm, how = None, process
    if str(process).startswith("prewarmed"):
        assert sweep.prewarm(["-m", "seed=1,2"])
        warm, process = sweep._prewarmed.process, True
    logger = sweep.SweepLogger(cfg, folder, poll_s=0.05, process=process)
    if warm is not None:
        assert logger._worker is warm and sweep._prewarmed is None  # adopted, once
    if how == "prewarmed, gone before the sweep":  # then a logger is forked as without it
        warm.terminate()
        warm.join()
    logger.start()
    logger.stop()
    assert logger.error is None and (logger.logged, logger.already) == (2, 0)
    assert not list(folder.glob("*.json"))  # each record is deleted once logged
    runs = {r.data.tags["backdoor_study.kind"]: r for r in runs_of(store, experiment)}
    assert sorted(runs) == ["eval", "train"]
    trained = runs["train"]
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert meta["mlflow"] == {"run_id": trained.info.run_id, "tracking_uri": store}
    assert trained.info.status == "FINISHED" and trained.info.run_name == "mlp-rare_value-0.05-s42"
    assert trained.data.params["model.hidden_sizes"] == "[128, 64]"
    history = MlflowClient(store).get_metric_history(trained.info.run_id, "val_auroc")
    assert sorted(m.step for m in history) == [1, 2]
    figures = MlflowClient(store).list_artifacts(trained.info.run_id, "figures")
    assert [a.path for a in figures] == ["figures/confusion_matrices.svg"]
    assert runs["eval"].data.tags["mlflow.parentRunId"] == trained.info.run_id
    (line,) = [r.getMessage() for r in caplog.records if "tracking-time sweep" in r.getMessage()]
    assert "the launching process logged 2 runs in" in line
    assert "tracking-time train" not in (run_dir / "train.log").read_text()

    sweep.write_finished_record(folder, cfg, "train", run_dir, job=1)  # e.g. a re-run sweep
    again = sweep.SweepLogger(cfg, folder, poll_s=0.05, process=process)
    again.start()
    again.stop()
    assert (again.logged, again.already) == (0, 1)
    assert len(runs_of(store, experiment)) == 2


def test_an_unusable_store_or_a_broken_record_costs_the_sweep_nothing(
    cohort, store, tmp_path, monkeypatch, caplog
):
    """The logging thread warns and ends; stop() returns and says what to sync; a record that
    cannot be logged is reported and the others are logged."""
    from backdoor_study import sweep

    cfg = make_cfg("train", cohort, tmp_path, f"tracking.uri={store}", "tracking.experiment=bad")
    train.run(cfg)
    monkeypatch.delenv(tracking.TRACKING_ENV)
    folder = tmp_path / "records"
    sweep.write_finished_record(folder, cfg, "train", cfg.run_dir)
    gone = tmp_path / "gone"
    sweep.write_finished_record(folder, cfg, "train", gone)  # its run directory is not there

    caplog.set_level(logging.INFO, logger="backdoor_study")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's directory should be")
    unusable = copy.deepcopy(cfg)
    unusable.tracking.uri = f"sqlite:///{blocker}/mlflow.db"
    logger = sweep.SweepLogger(unusable, folder, poll_s=0.05)
    logger.start()
    logger.stop()
    assert logger.store_ok is False and logger.logged == 0
    assert "MLflow tracking unavailable" in caplog.text
    assert (
        "2 run(s) of the sweep were not logged" in caplog.text
        and "backdoor_study.sync" in caplog.text
    )
    assert not runs_of(store, "bad")

    caplog.clear()

    def broken(cfg):
        raise RuntimeError("a bug in the logging thread")

    with monkeypatch.context() as m:
        m.setattr(tracking, "prepare_store", broken)
        logger = sweep.SweepLogger(cfg, folder, poll_s=0.05)
        logger.start()
        logger.stop()  # returns: the thread is over
    assert isinstance(logger.error, RuntimeError)
    assert "MLflow logging of the sweep stopped (RuntimeError: a bug in the logging thread)" in (
        caplog.text
    )

    caplog.clear()
    logger = sweep.SweepLogger(cfg, folder, poll_s=0.05)
    logger.start()
    logger.stop()
    assert logger.error is None and logger.logged == 1 and logger.unlogged
    assert f"could not log {folder}" in caplog.text and "1 run(s) of the sweep were not logged" in (
        caplog.text
    )
    (run,) = runs_of(store, "bad")
    assert run.data.tags["backdoor_study.run_dir"] == str(Path(cfg.run_dir).resolve())


def test_a_bad_sweep_logging_value_is_refused(cohort, tmp_path, capsys, monkeypatch):
    from backdoor_study import sweep
    from backdoor_study.config import ConfigError

    expected = "tracking.sweep_logging='bogus' is invalid: expected one of ['launcher', 'jobs']"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train.run(make_cfg("train", cohort, tmp_path, "tracking.sweep_logging=bogus"))
    # a sweep refuses it in its launching process, before any job starts or the store is made
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose(
            "train",
            overrides=[f"runs_root={tmp_path}", "tracking.sweep_logging=bogus"],
            return_hydra_config=True,
        )
    monkeypatch.delenv(tracking.TRACKING_ENV)
    monkeypatch.delenv(sweep.SWEEP_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        sweep.SweepCallback().on_multirun_start(config)
    assert exit_.value.code == 1
    assert f"backdoor_study.train: error: ConfigError: {expected}" in capsys.readouterr().err
    assert sweep.LOGGING_ENV not in os.environ and not (tmp_path / tracking.STORE_FILE).exists()

    # the classic study's runs log from their own process: its sweeps log in the jobs
    from backdoor_study.config import validate

    with initialize_config_dir(config_dir=str(CONF_DIR / "classic"), version_base="1.3"):
        classic = compose("classic", overrides=["tracking.sweep_logging=launcher"])
    with pytest.raises(ConfigError, match=r"tracking.sweep_logging='launcher' is invalid"):
        validate(classic)


def test_a_run_log_holds_only_its_own_threads_records(tmp_path):
    """With the basic launcher a sweep's jobs run in the launching process, beside its logging
    thread: that thread's lines are not the run's and stay out of its train.log."""
    import threading

    other = logging.getLogger("backdoor_study.sweep")
    with train._RunLog() as run_log:
        logging.getLogger("backdoor_study.train").warning("before the run directory exists")
        run_log.attach(tmp_path / "train.log")
        thread = threading.Thread(target=other.warning, args=("another thread's line",))
        thread.start()
        thread.join()
        logging.getLogger("backdoor_study.train").warning("the run's own line")
    text = (tmp_path / "train.log").read_text()
    assert "before the run directory exists" in text and "the run's own line" in text
    assert "another thread's line" not in text


def test_a_redrawn_confusion_figure_is_the_svg_of_a_new_one(tmp_path):
    """confusion_figures keeps one figure per shape and redraws it for each run (a sweep's
    logger draws one per run): the figure it logs (``save_figure``'s SVG) must be byte for byte a
    new figure's, with nothing of the previous run left on it, and its text must be text."""
    import io

    import numpy as np
    import pandas as pd

    from backdoor_study.utils import write_json

    def run(name: str, seed: int, triggered: bool = True) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        rng = np.random.default_rng(seed)
        y, p = rng.integers(0, 2, 200), rng.random(200)
        frame = {"y_true": y, "pred": (p > 0.4).astype(int), "prob_0": 1 - p, "prob_1": p}
        if triggered:
            q = rng.random(200) ** (seed + 1)
            frame |= {"prob_triggered_0": 1 - q, "prob_triggered_1": q}
        pd.DataFrame(frame).to_parquet(folder / "predictions.parquet")
        write_json(folder / rundir.METRICS_FILE, {"decision_threshold": 0.4})
        return folder

    def saved(folder: Path) -> bytes:
        (figure,) = tracking.confusion_figures(folder).values()
        buf = io.BytesIO()
        tracking.save_figure(figure, buf)
        return buf.getvalue()

    a, b, clean = run("a", 1), run("b", 2), run("clean", 3, triggered=False)
    tracking._figures.by_shape.clear()
    new_b = saved(b)
    assert b"<svg" in new_b and b"triggered test set</text>" in new_b
    tracking._figures.by_shape.clear()
    new_clean = saved(clean)
    tracking._figures.by_shape.clear()
    redrawn = [saved(a), saved(clean), saved(b), saved(clean)]
    assert redrawn[0] != new_b
    assert redrawn[2] == new_b and redrawn[1] == redrawn[3] == new_clean
    shared = tracking.confusion_figures(a)["confusion_matrices"]
    assert tracking.confusion_figures(b)["confusion_matrices"] is shared


def test_a_dataset_logged_by_another_process_in_between_is_linked_not_lost(store):
    """MLflow's SQL store looks a dataset up, then inserts it: a second process logging the same
    new dataset in between (jobs that log their own runs and finish together) makes the insert
    fail with a UNIQUE constraint. Here the other process's dataset is in the store and our
    first lookup is made to miss it, as it would have a moment earlier: the insert fails in the
    database, and the tracker's second try links the dataset instead of giving up on the run."""
    import contextlib

    from mlflow.store.tracking import sqlalchemy_store
    from mlflow.store.tracking.dbmodels.models import SqlDataset

    client = MlflowClient(store)
    exp_id = client.create_experiment(f"race-{time.time_ns()}")
    ours, theirs = (
        tracking.MlflowTracker(client, client.create_run(exp_id).info.run_id, store, new=True)
        for _ in range(2)
    )
    source = {"uri": "data/cohort.parquet"}
    theirs.log_dataset("cohort", "d" * 64, source, "train")

    class Missed:  # the lookup made before the other process inserted the dataset
        def filter(self, *args):
            return self

        def all(self):
            return []

    impl = sqlalchemy_store.SqlAlchemyStore._log_inputs_impl
    tries: list[bool] = []

    def looked_up_too_early(self, *args, **kwargs):
        tries.append(True)
        if len(tries) > 1:
            return impl(self, *args, **kwargs)
        real = self.ManagedSessionMaker

        @contextlib.contextmanager
        def sessions(*a, **k):
            with real(*a, **k) as session:
                query = session.query
                session.query = lambda entity, *rest: (
                    Missed() if entity is SqlDataset else query(entity, *rest)
                )
                yield session

        self.ManagedSessionMaker = sessions
        try:
            return impl(self, *args, **kwargs)
        finally:
            self.ManagedSessionMaker = real

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqlalchemy_store.SqlAlchemyStore, "_log_inputs_impl", looked_up_too_early)
        ours.log_dataset("cohort", "d" * 64, source, "train")
    assert len(tries) == 2  # the first insert failed in the database
    assert not ours.failed and not theirs.failed
    for tracker in (ours, theirs):
        inputs = client.get_run(tracker.run_id).inputs.dataset_inputs
        assert [d.dataset.name for d in inputs] == ["cohort"]
