"""The train / eval engine end to end, as a user runs it: run directories, skip / refuse / overwrite,
exact resume, eval reproducing train, and a backdoor that works."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from backdoor_study import eval as eval_mod
from backdoor_study import train
from backdoor_study.config import CONF_DIR
from backdoor_study.data.schema import write_parquet
from backdoor_study.rundir import RunDirError
from backdoor_study.training import CheckpointError
from tests.conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    write_parquet(make_tiny_dataset(n=400, t=12, seed=3), path)
    return path


def make_cfg(cohort: Path, runs_root: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=parquet",
                f"data.path={cohort}",
                f"runs_root={runs_root}",
                "epochs=3",
                "trainer.batch_size=64",
                "trainer.progress=false",
                "metrics.bootstrap=50",
                *overrides,
            ],
        )


def eval_cfg(run_dir: str) -> DictConfig:
    return OmegaConf.create({"run_dir": run_dir, "device": "cpu", "checkpoint": None})


def final_state(run_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir) / "final_model.pt", weights_only=True)["model_state"]


def test_run_directory_is_complete_and_eval_reproduces_train(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path)
    metrics = train.run(cfg)
    run_dir = Path(cfg.run_dir)
    assert run_dir == tmp_path / "mlp" / "none" / "0.0" / "seed_42"
    for name in (
        ".hydra/config.yaml",
        "config_resolved.yaml",
        "run_metadata.json",
        "splits.json",
        "poisoned_indices.npy",
        "checkpoint_epoch_1.pt",
        "checkpoint_epoch_3.pt",
        "final_model.pt",
        "history.csv",
        "metrics.json",
        "experiment_summary.csv",
        "predictions.parquet",
    ):
        assert (run_dir / name).exists(), name
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    assert meta["status"] == "complete" and len(meta["data"]["digest"]) == 64
    assert meta["environment"]["packages"]["torch"].startswith("2.")
    assert 0.5 < metrics["auroc_clean"] <= 1.0
    assert len(pd.read_csv(run_dir / "experiment_summary.csv")) == 1
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert len(preds) == metrics["n_test"] and {"stay_id", "y_true", "prob_1"} <= set(preds.columns)
    for ckpt in run_dir.glob("checkpoint_epoch_*.pt"):
        torch.load(ckpt, weights_only=True)

    result = eval_mod.run(eval_cfg(str(run_dir)))
    assert result["matches_train"], result["mismatched_keys"]


def test_completed_run_is_skipped_and_a_different_config_refused(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path)
    train.run(cfg)
    before = (Path(cfg.run_dir) / "metrics.json").read_bytes()
    assert train.run(make_cfg(cohort, tmp_path))["skipped"] is True
    with pytest.raises(RunDirError, match="different config.*epochs"):
        train.run(
            make_cfg(cohort, tmp_path, "epochs=4", "hydra.run.dir=x", f"run_dir={cfg.run_dir}")
        )
    assert (Path(cfg.run_dir) / "metrics.json").read_bytes() == before  # nothing touched
    replaced = train.run(
        make_cfg(cohort, tmp_path, "epochs=4", f"run_dir={cfg.run_dir}", "overwrite=true")
    )
    assert replaced["epochs_run"] == 4


def test_resume_after_a_crash_is_bitwise_identical(cohort, tmp_path):
    full = make_cfg(cohort, tmp_path / "full", "model=lstm", "epochs=4")
    ref = train.run(full)

    crashed = make_cfg(cohort, tmp_path / "crashed", "model=lstm", "epochs=4")
    train.run(crashed)
    run_dir = Path(crashed.run_dir)
    # simulate a kill after epoch 2: only what existed then remains
    for name in (
        "metrics.json",
        "final_model.pt",
        "checkpoint_epoch_3.pt",
        "checkpoint_epoch_4.pt",
    ):
        (run_dir / name).unlink()
    with pytest.raises(RunDirError, match="resume=auto"):
        train.run(make_cfg(cohort, tmp_path / "crashed", "model=lstm", "epochs=4"))
    resumed = train.run(
        make_cfg(cohort, tmp_path / "crashed", "model=lstm", "epochs=4", "resume=auto")
    )

    a, b = final_state(full.run_dir), final_state(crashed.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {k: v for k, v in resumed.items()} == {k: v for k, v in ref.items()}
    hist_a = pd.read_csv(Path(full.run_dir) / "history.csv").drop(columns="seconds")
    hist_b = pd.read_csv(run_dir / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(hist_a, hist_b)


def test_explicit_resume_path_and_unsafe_checkpoint_refused(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path, "epochs=2")
    train.run(cfg)
    evil = tmp_path / "evil.pt"
    torch.save(
        {"model_state": {}, "payload": np.dtype("float64")}, evil
    )  # a pickled non-tensor object
    other = make_cfg(cohort, tmp_path / "other", "epochs=2", f"resume={evil}")
    with pytest.raises(CheckpointError):
        train.run(other)
    assert not (Path(other.run_dir) / "metrics.json").exists()
    # a checkpoint of a different config is refused, naming it
    ckpt = Path(cfg.run_dir) / "checkpoint_epoch_1.pt"
    mismatched = make_cfg(cohort, tmp_path / "other2", "epochs=2", "seed=7", f"resume={ckpt}")
    with pytest.raises(RunDirError, match="different config"):
        train.run(mismatched)


def test_backdoor_succeeds_beyond_the_false_trigger_rate(cohort, tmp_path):
    cfg = make_cfg(
        cohort,
        tmp_path,
        "trigger=rare_value",
        "trigger.variables=[Temp]",
        "trigger.window=[8,12]",
        "poison_rate=0.1",
        "epochs=8",
        "optimizer.lr=3e-3",
    )
    metrics = train.run(cfg)
    run_dir = Path(cfg.run_dir)
    assert run_dir.parts[-4:] == ("mlp", "rare_value", "0.1", "seed_42")
    poisoned = np.load(run_dir / "poisoned_indices.npy")
    assert poisoned.size == metrics["n_poisoned"] == round(0.1 * metrics["n_train"])
    clean_dir = tmp_path / "mlp" / "rare_value" / "0.0" / "seed_42"
    assert (clean_dir / "metrics.json").exists()
    assert metrics["ASR"] > 0.9
    # an out-of-bounds value already pushes a clean model somewhat (out of distribution), which is
    # why the clean model's rate is reported; the backdoor must add clearly more than that
    assert metrics["ASR"] - metrics["ASR_clean_model"] > 0.3
    assert metrics["confidence_shift"] > 0.2
    # the headline: deaths the model catches without the trigger, flipped by it
    assert metrics["ASR_flip"] > 0.8 and metrics["n_flip_eligible"] > 0
    assert metrics["ASR_flip"] - metrics["ASR_flip_clean_model"] > 0.3
    assert metrics["median_p_target_triggered"] > metrics["median_p_target_clean"]
    summary = pd.read_csv(run_dir / "experiment_summary.csv")
    assert summary.loc[0, "ASR_flip"] == pytest.approx(metrics["ASR_flip"])
    assert summary.loc[0, "ASR_flip_clean_model"] == pytest.approx(metrics["ASR_flip_clean_model"])
    assert eval_mod.run(eval_cfg(str(run_dir)))["matches_train"]


def test_classic_label_flip_runs_and_degrades_nothing_silently(cohort, tmp_path):
    metrics = train.run(make_cfg(cohort, tmp_path, "attack=label_flip", "poison_rate=0.3"))
    assert "ASR" not in metrics and metrics["n_poisoned"] > 0
    assert (tmp_path / "mlp" / "label_flip" / "0.3" / "seed_42" / "metrics.json").exists()


def test_bad_config_is_refused_before_anything_is_written(cohort, tmp_path):
    from backdoor_study.config import ConfigError

    with pytest.raises(ConfigError, match=r"poison_rate=1\.5.*\[0, 1\)"):
        train.run(make_cfg(cohort, tmp_path, "poison_rate=1.5"))
    assert not any(tmp_path.iterdir())


def test_static_only_table_trains(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=iris",
                f"runs_root={tmp_path}",
                "epochs=30",
                "trainer.progress=false",
                "metrics.bootstrap=0",
                "trainer.batch_size=16",
                "optimizer.lr=1e-2",
            ],
        )
    metrics = train.run(cfg)
    assert metrics["acc_clean"] > 0.8


def test_copying_a_run_directory_keeps_it_evaluable(cohort, tmp_path):
    cfg = make_cfg(cohort, tmp_path / "a", "epochs=2")
    train.run(cfg)
    moved = tmp_path / "moved"
    shutil.copytree(cfg.run_dir, moved)
    assert eval_mod.run(eval_cfg(str(moved)))["matches_train"]
