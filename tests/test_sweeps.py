"""Hydra multirun sweeps from the command line: parallel jobs, one MLflow run each, restartable by
running the same command again, and a failed job that fails alone and is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from backdoor_study import rundir, tracking
from backdoor_study.data.schema import write_parquet
from tests.conftest import REPO_ROOT, make_tiny_dataset


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


@pytest.mark.slow  # two 4-job sweeps in worker processes: minutes on 2 cores
def test_joblib_sweep_one_mlflow_run_per_job_and_a_rerun_resumes_adding_none(cohort, tmp_path):
    grid = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp,lstm", "seed=1,2"]
    out = sweep(tmp_path, cohort, *grid)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = rundir.find_run_dirs(tmp_path)
    assert len(runs) == 4
    first = mlflow_runs(tmp_path)  # the store was created before the parallel jobs started
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
