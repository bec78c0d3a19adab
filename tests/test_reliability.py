"""Issue #7: each fault that lost data, mixed two runs or gave a silently wrong result, reproduced.

Every test here failed on the code before the fix (see docs/reliability.md for the list)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from backdoor_study import eval as eval_mod
from backdoor_study import rundir, train
from backdoor_study.data.schema import DataValidationError, write_parquet
from backdoor_study.rundir import RunDirError
from tests.conftest import make_tiny_dataset
from tests.test_engine import make_cfg

POISONED = ("trigger=rare_value", "trigger.window=[8,12]", "poison_rate=0.1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_parquet(make_tiny_dataset(n=400, t=12, seed=3), d / "tiny.parquet")
    return d


@pytest.fixture
def cohort(data_dir, tmp_path) -> Path:
    """A private copy: some tests change the file."""
    path = tmp_path / "tiny.parquet"
    shutil.copy(data_dir / "tiny.parquet", path)
    return path


def kill_after_epoch(run_dir: Path, epoch: int) -> None:
    """Leave ``run_dir`` as a kill right after checkpoint ``epoch`` would have."""
    for p in run_dir.iterdir():
        m = p.name.startswith("checkpoint_epoch_") and int(p.stem.split("_")[-1]) > epoch
        if m or p.name in ("metrics.json", "final_model.pt", "predictions.parquet"):
            p.unlink()


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def eval_cfg(run_dir: Path):
    return OmegaConf.create({"run_dir": str(run_dir), "device": "cpu", "checkpoint": None})


# ---------------------------------------------------------------- 1. resume=auto checks digests
def test_resume_auto_refuses_a_checkpoint_of_another_config(cohort, tmp_path):
    other = make_cfg(cohort, tmp_path / "a", "model.dropout=0.5", "epochs=2")
    train.run(other)
    cfg = make_cfg(cohort, tmp_path / "b", "model.dropout=0.3", "epochs=2")
    train.run(cfg)
    run_dir = Path(cfg.run_dir)
    kill_after_epoch(run_dir, 0)  # killed before its first checkpoint ...
    # ... and a checkpoint of the dropout=0.5 run ends up in its directory
    shutil.copy(Path(other.run_dir) / "checkpoint_epoch_1.pt", run_dir / "checkpoint_epoch_1.pt")
    with pytest.raises(
        RunDirError, match=r"checkpoint_epoch_1.pt was written by a different config"
    ):
        train.run(make_cfg(cohort, tmp_path / "b", "model.dropout=0.3", "epochs=2", "resume=auto"))
    assert not (run_dir / "metrics.json").exists()


def test_resume_auto_refuses_a_checkpoint_trained_on_other_data(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path, "epochs=3")
    train.run(cfg)
    kill_after_epoch(Path(cfg.run_dir), 1)
    write_parquet(make_tiny_dataset(n=400, t=12, seed=4), cohort)  # same path, other data
    with pytest.raises(RunDirError, match="trained on other data"):
        train.run(make_cfg(cohort, tmp_path, "epochs=3", "resume=auto"))


# ---------------------------------------------------------------- 3. overwrite never loses the old run
def test_overwrite_with_data_that_fails_to_load_keeps_the_old_run(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path, "epochs=2")
    train.run(cfg)
    run_dir = Path(cfg.run_dir)
    before = snapshot(run_dir)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(cohort.read_bytes()[:5000])
    new = make_cfg(
        cohort,
        tmp_path,
        "epochs=2",
        f"data.path={truncated}",
        f"run_dir={run_dir}",
        "overwrite=true",
    )
    with pytest.raises(DataValidationError, match="truncated.parquet is not a readable Parquet"):
        train.run(new)
    assert snapshot(run_dir) == before
    assert eval_mod.run(eval_cfg(run_dir))["matches_train"]


def test_overwrite_failing_after_training_keeps_the_old_run(cohort, tmp_path, monkeypatch):
    cfg = make_cfg(cohort, tmp_path, "epochs=2")
    train.run(cfg)
    run_dir = Path(cfg.run_dir)
    before = snapshot(run_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while evaluating")

    monkeypatch.setattr(train, "evaluate", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        train.run(make_cfg(cohort, tmp_path, "epochs=3", f"run_dir={run_dir}", "overwrite=true"))
    assert snapshot(run_dir) == before
    monkeypatch.undo()
    replaced = train.run(
        make_cfg(cohort, tmp_path, "epochs=3", f"run_dir={run_dir}", "overwrite=true")
    )
    assert replaced["epochs_run"] == 3 and not replaced.get("skipped")
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [
        f".{run_dir.name}.lock",
        run_dir.name,
    ]
    assert json.loads((run_dir / "run_metadata.json").read_text())["config_identity"]["epochs"] == 3
    assert eval_mod.run(eval_cfg(run_dir))["matches_train"]


def test_a_replacement_killed_between_its_two_renames_is_finished_or_undone(tmp_path):
    run_dir = tmp_path / "seed_1"
    for complete in (True, False):
        old, new = tmp_path / ".seed_1.old", rundir.staging_dir(run_dir)
        old.mkdir()
        (old / "metrics.json").write_text('{"v": "old"}')
        new.mkdir()
        if complete:
            (new / "metrics.json").write_text('{"v": "new"}')
        rundir.recover_replacement(run_dir)
        assert json.loads((run_dir / "metrics.json").read_text())["v"] == (
            "new" if complete else "old"
        )
        assert not old.exists() and not new.exists()
        shutil.rmtree(run_dir)


# ---------------------------------------------------------------- 4. eval verifies everything
@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    cfg = make_cfg(data_dir / "tiny.parquet", root, *POISONED, "epochs=3", "metrics.bootstrap=0")
    train.run(cfg)
    return Path(cfg.run_dir)


def _edit_weight(run_dir: Path, change) -> None:
    path = run_dir / "final_model.pt"
    state = torch.load(path, weights_only=True)
    name = sorted(state["model_state"])[-1]  # the last layer's bias: barely moves the metrics
    state["model_state"][name] = change(state["model_state"][name].clone())
    torch.save(state, path)


def _edit_metrics(run_dir: Path, edit) -> None:
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    edit(metrics)
    path.write_text(json.dumps(metrics))


def _plus_one(t: torch.Tensor) -> torch.Tensor:
    t.view(-1)[0] += 1.0
    return t


def _one_float_step(t: torch.Tensor) -> torch.Tensor:
    flat = t.view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(np.inf, dtype=flat.dtype))
    return t


TAMPERING = {
    "weight_plus_one": (lambda d: _edit_weight(d, _plus_one), "file_problems", "final_model.pt"),
    "weight_one_float_step": (
        lambda d: _edit_weight(d, _one_float_step),
        "file_problems",
        "final_model.pt",
    ),
    "n_poisoned_edited": (
        lambda d: _edit_metrics(d, lambda m: m.update(n_poisoned=123)),
        "mismatched_keys",
        "n_poisoned",
    ),
    "best_epoch_edited": (
        lambda d: _edit_metrics(d, lambda m: m.update(best_epoch=m["best_epoch"] % 3 + 1)),
        "mismatched_keys",
        "best_epoch",
    ),
    "auroc_clean_deleted": (
        lambda d: _edit_metrics(d, lambda m: m.pop("auroc_clean")),
        "missing_keys",
        "auroc_clean",
    ),
    "predictions_deleted": (
        lambda d: (d / "predictions.parquet").unlink(),
        "file_problems",
        "predictions.parquet",
    ),
    "predictions_edited": (
        lambda d: (
            pd.read_parquet(d / "predictions.parquet")
            .assign(pred=lambda f: 1 - f["pred"])
            .to_parquet(d / "predictions.parquet", index=False)
        ),
        "file_problems",
        "predictions.parquet",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_eval_reports_every_tampering_and_exits_non_zero(finished_run, tmp_path, case):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    assert eval_mod.run(eval_cfg(run_dir))["matches_train"]
    tamper, field, name = TAMPERING[case]
    tamper(run_dir)
    result = eval_mod.run(eval_cfg(run_dir))
    assert not result["matches_train"]
    assert name in result[field], result
    if case == "predictions_deleted":
        assert not result["predictions_match"]
    with pytest.raises(SystemExit) as info:
        eval_mod.main(eval_cfg(run_dir))
    assert info.value.code == 1


# ---------------------------------------------------------------- 5. resume=auto reaches the clean reference
def test_resume_auto_continues_a_clean_reference_killed_mid_training(cohort, tmp_path):
    ref = train.run(make_cfg(cohort, tmp_path / "ref", *POISONED, "epochs=3"))
    cfg = make_cfg(cohort, tmp_path / "crashed", *POISONED, "epochs=3")
    train.run(cfg)
    # killed in the nested clean reference after its epoch 1; the poisoned run had finished training
    clean_dir = Path(train.clean_reference_config(cfg).run_dir)
    kill_after_epoch(clean_dir, 1)
    (Path(cfg.run_dir) / "metrics.json").unlink()
    with pytest.raises(RunDirError, match="pass resume=auto"):
        train.run(make_cfg(cohort, tmp_path / "crashed", *POISONED, "epochs=3"))
    resumed = train.run(
        make_cfg(cohort, tmp_path / "crashed", *POISONED, "epochs=3", "resume=auto")
    )
    assert resumed == ref  # every metric bitwise equal, ASR_clean_model included


# ---------------------------------------------------------------- clearer messages, leftovers
def test_leftover_tmp_files_are_removed_when_the_run_dir_is_next_opened(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path, "epochs=3")
    train.run(cfg)
    run_dir = Path(cfg.run_dir)
    kill_after_epoch(run_dir, 2)
    stale = run_dir / ".checkpoint_epoch_3.pt.k2j4h1.tmp"  # a write killed mid-way
    stale.write_bytes(os.urandom(100))
    train.run(make_cfg(cohort, tmp_path, "epochs=3", "resume=auto"))
    assert not stale.exists() and not list(run_dir.glob(".*.tmp"))
    stale.write_bytes(b"x")
    assert eval_mod.run(eval_cfg(run_dir))["matches_train"] and not stale.exists()


def test_non_parquet_data_path_is_a_data_error(tmp_path):
    bad = tmp_path / "cohort.parquet"
    bad.write_text("stay_id,label\n1,0\n")
    with pytest.raises(DataValidationError, match=r"cohort.parquet is not a readable Parquet file"):
        train.run(make_cfg(bad, tmp_path / "runs"))
    assert not any(p.name == "seed_42" for p in (tmp_path / "runs").rglob("*"))
