"""Run directories: loading a finished run (``rundir.load_run``), the per-directory lock (with real
processes), and one-line errors from the command line."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from backdoor_study import eval as eval_mod
from backdoor_study import rundir, train
from backdoor_study.data.schema import write_parquet
from backdoor_study.rundir import RunDirError
from backdoor_study.utils import sha256_json
from tests.conftest import REPO_ROOT, make_tiny_dataset
from tests.test_engine import make_cfg

ENV = {
    **os.environ,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HYDRA_FULL_ERROR": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    write_parquet(make_tiny_dataset(n=400, t=12, seed=3), path)
    return path


def train_args(cohort: Path, runs_root: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "backdoor_study.train",
        "data=parquet",
        f"data.path={cohort}",
        f"runs_root={runs_root}",
        "epochs=3",
        "trainer.batch_size=64",
        "trainer.progress=false",
        "metrics.bootstrap=0",
        *overrides,
    ]


def digest_of(cfg: DictConfig) -> str:
    return sha256_json(rundir.config_identity(cfg))


# ------------------------------------------------------------------------------------ load_run
def test_load_run_rebuilds_what_the_model_was_trained_on(cohort, tmp_path):
    cfg = make_cfg(
        cohort,
        tmp_path,
        "trigger=rare_value",
        "trigger.window=[8,12]",
        "poison_rate=0.1",
        "epochs=2",
    )
    cfg.clean_reference = False
    metrics = train.run(cfg)
    loaded = rundir.load_run(cfg.run_dir, device="cpu")
    assert loaded.metrics == metrics and loaded.metadata["status"] == "complete"
    assert loaded.cfg.poison_rate == 0.1 and not loaded.model.training
    assert loaded.poisoned_indices.size == metrics["n_poisoned"] > 0
    np.testing.assert_array_equal(loaded.poisoned_indices, loaded.prepared.poison.poisoned_indices)
    # positions into the training split whose labels were flipped to the target
    train_labels = loaded.prepared.labels["train"].numpy()
    assert (train_labels[loaded.poisoned_indices] == int(cfg.trigger.target_label)).all()
    assert loaded.checkpoint == Path(cfg.run_dir) / "final_model.pt"


def test_a_run_config_reads_as_omegaconf_loads_it(cohort, tmp_path):
    """read_run_config parses with libyaml under OmegaConf's YAML rules: the same objects, of the
    same types, as OmegaConf.load gives, for a whole config and for values whose YAML type is
    easy to get wrong; and the same config identity (the digest runs are matched by)."""
    import yaml

    cfg = make_cfg(cohort, tmp_path, "trigger=rare_value", "poison_rate=0.05")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / rundir.RESOLVED_CONFIG_FILE
    path.write_text(
        OmegaConf.to_yaml(cfg, resolve=True)
        + "tricky:\n  a: 1e-3\n  b: 1.0e-05\n  c: '1e-3'\n  d: .inf\n  e: 2026-12-07\n"
        + "  f: null\n  g: [1, 2.5, x]\n  h: 1_000\n  i: yes\n  j: '0.5'\n  k: 7\n"
    )
    loaded = OmegaConf.load(path)
    plain = rundir.read_run_config(run_dir)
    assert plain == OmegaConf.to_container(loaded)
    assert repr(plain) == repr(OmegaConf.to_container(loaded))  # types too: 7, 7.0 and '7' differ
    assert plain["tricky"]["a"] == 0.001 and plain["tricky"]["e"] == "2026-12-07"
    assert rundir.load_run_config(run_dir) == loaded
    assert rundir.config_identity(plain) == rundir.config_identity(loaded)
    assert digest_of(loaded) == sha256_json(rundir.config_identity(plain))
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key a"):
        rundir.read_run_config(run_dir)


def test_load_run_refuses_what_is_not_a_finished_run(cohort, tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        rundir.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        rundir.load_run(tmp_path / "empty")
    cfg = make_cfg(cohort, tmp_path, "epochs=2")
    train.run(cfg)
    run_dir = Path(cfg.run_dir)
    (run_dir / "metrics.json").rename(run_dir / "metrics.bak")
    with pytest.raises(RunDirError, match="unfinished run.*resume=auto"):
        rundir.load_run(run_dir)
    (run_dir / "metrics.bak").rename(run_dir / "metrics.json")
    np.save(run_dir / "poisoned_indices.npy", np.array([1, 2, 3]))
    with pytest.raises(RunDirError, match=r"poisoned_indices.npy \(3 indices\) differs"):
        rundir.load_run(run_dir)


def test_corrupt_run_metadata_names_the_file_and_what_to_do(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path, "epochs=2")
    train.run(cfg)
    meta = Path(cfg.run_dir) / "run_metadata.json"
    meta.write_text('{"config_digest": "ab')  # truncated
    with pytest.raises(RunDirError, match=r"run_metadata.json is empty or corrupt.*overwrite=true"):
        train.run(make_cfg(cohort, tmp_path, "epochs=2"))
    with pytest.raises(RunDirError, match=r"run_metadata.json is empty or corrupt"):
        rundir.load_run(cfg.run_dir)


# ------------------------------------------------------------------------------------ the lock
def _start_together(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(
            c, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, out, err)
        for p, (out, err) in zip(procs, outs)
    ]


def test_two_processes_same_config_one_trains_the_other_skips(cohort, tmp_path):
    a, b = _start_together(train_args(cohort, tmp_path), train_args(cohort, tmp_path))
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-1000:] + b.stderr[-1000:]
    status = sorted(p.stdout.strip().splitlines()[-1].split(":")[0] for p in (a, b))
    assert status == ["done", "skipped (already complete)"]  # trained once, not twice
    run_dir = tmp_path / "mlp" / "none" / "0.0" / "seed_42"
    assert (run_dir / "train.log").read_text().count("run complete") == 1


def test_two_processes_different_configs_never_mix_a_run_directory(cohort, tmp_path):
    run_dir = tmp_path / "shared"
    a, b = _start_together(
        train_args(cohort, tmp_path, f"run_dir={run_dir}", "model.dropout=0.5"),
        train_args(cohort, tmp_path, f"run_dir={run_dir}", "model.dropout=0.3"),
    )
    assert sorted([a.returncode, b.returncode]) == [0, 1], a.stderr[-1000:] + b.stderr[-1000:]
    loser = a if a.returncode else b
    assert "different config" in loser.stderr and "Traceback" not in loser.stderr
    # everything in the directory comes from the winner
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    resolved = (run_dir / "config_resolved.yaml").read_text()
    winner_dropout = meta["config_identity"]["model"]["dropout"]
    assert f"dropout: {winner_dropout}" in resolved
    for f in [run_dir / "final_model.pt", *run_dir.glob("checkpoint_epoch_*.pt")]:
        state = torch.load(f, weights_only=True)
        assert (
            state.get("config_digest", state.get("metadata", {}).get("config_digest"))
            == meta["config_digest"]
        ), f.name
    result = eval_mod.run(
        OmegaConf.create({"run_dir": str(run_dir), "device": "cpu", "checkpoint": None})
    )
    assert result["matches_train"], result


def test_a_different_config_is_refused_at_once_while_the_lock_is_held(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path, "epochs=2")
    with rundir.lock(Path(cfg.run_dir), config_digest="0" * 64, purpose="train"):
        with pytest.raises(
            RunDirError, match=rf"another process \(pid {os.getpid()}.*different config"
        ):
            train.run(cfg)
    assert not Path(cfg.run_dir).exists()  # the lock lives beside the run dir, never creates it
    assert rundir.lock_path(Path(cfg.run_dir)).read_text() == ""  # no stale holder left


def test_a_lock_left_by_a_killed_process_never_blocks(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path, "epochs=2")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from backdoor_study import rundir\n"
            "with rundir.lock(Path(sys.argv[1]), config_digest=sys.argv[2]):\n"
            "    print('held', flush=True); time.sleep(300)",
            str(cfg.run_dir),
            digest_of(cfg),
        ],
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(rundir.lock_path(Path(cfg.run_dir))) as f:  # really held by the other process
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert rundir.lock_holder(Path(cfg.run_dir))["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert train.run(cfg)["epochs_run"] == 2  # not blocked
