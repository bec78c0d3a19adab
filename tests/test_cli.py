"""The command line as a user types it: --help, --cfg job, refused bad input, multirun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def cli(*args: str, cwd: Path = REPO_ROOT, debug: bool = False) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HYDRA_FULL_ERROR": "1" if debug else "0",
    }
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_config_groups():
    out = cli("backdoor_study.train", "--help")
    assert out.returncode == 0, out.stderr
    for group in ("data:", "model:", "trigger:", "attack:"):
        assert group in out.stdout
    assert "tabtransformer" in out.stdout and "rare_value" in out.stdout
    assert "python -m backdoor_study.train model=lstm trigger=rare_value" in out.stdout  # examples


def test_cfg_job_shows_the_composed_config():
    out = cli(
        "backdoor_study.train",
        "--cfg",
        "job",
        "model=lstm",
        "trigger=rare_value",
        "poison_rate=0.01",
    )
    assert out.returncode == 0, out.stderr
    assert "_target_: backdoor_study.models.lstm.LSTM" in out.stdout
    assert "mode: out_of_bounds" in out.stdout and "poison_rate: 0.01" in out.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=transformer", "Could not find 'model/transformer'"),
        ("epochs=ten", "epochs"),
        ("poison_rate=1.0", "poison_rate=1.0 is invalid: expected a fraction in [0, 1)"),
        ("device=gpu", "device"),
        ("trigger=rare_value", None),  # valid: composed only (--cfg job) below
    ],
)
def test_bad_input_names_the_key(override, message, tmp_path):
    if message is None:
        assert cli("backdoor_study.train", "--cfg", "job", override).returncode == 0
        return
    out = cli("backdoor_study.train", override, f"runs_root={tmp_path}", "epochs=1")
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_unknown_trigger_variable_is_refused_naming_valid_ones(tmp_path):
    out = cli(
        "backdoor_study.train",
        "data=iris",
        "trigger=rare_value",
        "trigger.variables=[HeartRate]",
        "poison_rate=0.1",
        f"runs_root={tmp_path}",
        "epochs=1",
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "HeartRate" in text and "trigger.variables" in text and "petal length (cm)" in text


@pytest.mark.slow
def test_multirun_sweep_writes_one_run_directory_per_cell(tmp_path):
    out = cli(
        "backdoor_study.train",
        "-m",
        "data=iris",
        "model=mlp,tabtransformer",
        "seed=1,2",
        "epochs=2",
        "metrics.bootstrap=0",
        f"runs_root={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    done = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("metrics.json"))
    assert done == [
        "mlp/none/0.0/seed_1",
        "mlp/none/0.0/seed_2",
        "tabtransformer/none/0.0/seed_1",
        "tabtransformer/none/0.0/seed_2",
    ]


def test_runtime_errors_are_one_line_and_the_traceback_is_opt_in(tmp_path):
    out = cli("backdoor_study.eval", f"run_dir={tmp_path / 'nope'}")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines == [
        f"backdoor_study.eval: error: RunDirError: run_dir='{tmp_path / 'nope'}' does not exist or is not a directory"
    ]
    assert "Error executing job" not in out.stdout + out.stderr
    assert not any(tmp_path.iterdir())  # a mistyped run_dir creates nothing
    env_debug = cli("backdoor_study.eval", f"run_dir={tmp_path / 'nope'}", debug=True)
    assert env_debug.returncode == 1 and "Traceback" in env_debug.stderr
