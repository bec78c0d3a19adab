"""Checkpoint files: weights_only-loadable, refused when unsafe or damaged, rotated, never torn."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import backdoor_study.training.checkpoint as checkpoint_module
from backdoor_study.training import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from backdoor_study.training.checkpoint import (
    FORMAT_VERSION,
    TRAINING_KEYS,
    CheckpointWriter,
    check_plain,
)
from tests.test_trainer import EPOCHS, make_data, make_trainer

torch.set_num_threads(1)


class NotATensor:
    """Anything a weights_only load must never unpickle."""

    def __init__(self) -> None:
        self.payload = "code could run here"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    make_trainer(ckpt_dir, epochs=3).fit(*make_data())
    return ckpt_dir


def test_every_checkpoint_loads_with_weights_only_and_no_allowlist(run_dir: Path) -> None:
    assert [e for e, _ in list_checkpoints(run_dir)] == [1, 2, 3]
    assert latest_checkpoint(run_dir) == checkpoint_path(run_dir, 3)
    for epoch, path in list_checkpoints(run_dir):
        state = torch.load(path, weights_only=True)
        assert state["format_version"] == FORMAT_VERSION and state["epoch"] == epoch
        assert len(state["history"]) == epoch
        assert set(state["rng"]) == {"python", "numpy", "torch", "cuda", "generators"}
        assert "shuffle" in state["rng"]["generators"]
        assert set(state["best"]) == {
            "epoch",
            "val_auroc",
            "model_state",
            "epochs_without_improvement",
        }
        assert state["scheduler_state"]["last_epoch"] == epoch
        check_plain(state)  # the loaded tree is tensors and plain values, all the way down
    # No temporary files are left beside the checkpoints.
    assert sorted(p.name for p in run_dir.iterdir()) == [
        f"checkpoint_epoch_{e}.pt" for e in (1, 2, 3)
    ]


def test_pickled_custom_object_is_refused(run_dir: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint_path(run_dir, 1), weights_only=True)
    state["metadata"] = {"x": NotATensor()}
    bad = tmp_path / "checkpoint_epoch_1.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="pickled objects") as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_truncated_file_is_refused(run_dir: Path, tmp_path: Path) -> None:
    data = checkpoint_path(run_dir, 2).read_bytes()
    bad = tmp_path / "checkpoint_epoch_2.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value)
    bad.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)


def test_random_bytes_are_not_a_valid_checkpoint_and_unsafe_loading_is_never_suggested(
    tmp_path: Path,
) -> None:
    for i, data in enumerate([np.random.default_rng(0).bytes(4096), b"\x80\x02garbage"]):
        bad = tmp_path / f"random_{i}.pt"
        bad.write_bytes(data)
        with pytest.raises(CheckpointError, match="not a valid checkpoint") as info:
            load_checkpoint(bad)
        assert "weights_only=False" not in str(info.value) and "pickled" not in str(info.value)
    evil = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "x": NotATensor()}, evil)
    with pytest.raises(CheckpointError, match="pickled objects") as info:
        load_checkpoint(evil)
    assert "NotATensor" in str(info.value) and "weights_only=False" not in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s.update(format_version=99), "format_version=99"),
        (lambda s: s.pop("rng"), r"missing keys \['rng'\]"),
        (lambda s: s["best"].pop("model_state"), "best.model_state"),
    ],
)
def test_other_format_or_missing_keys_are_refused(
    run_dir: Path, tmp_path: Path, mutate, reason: str
) -> None:
    state = torch.load(checkpoint_path(run_dir, 1), weights_only=True)
    mutate(state)
    bad = tmp_path / "c.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(bad, required=TRAINING_KEYS)
    # Resuming asks for every training key.
    with pytest.raises(CheckpointError, match=reason):
        make_trainer(None).fit(*make_data(), resume_from=bad)


def test_default_load_needs_only_model_state(tmp_path: Path) -> None:
    """What eval reads: final_model.pt-style files with model_state and plain extras."""
    final = tmp_path / "final_model.pt"
    torch.save({"format_version": FORMAT_VERSION, "model_state": {"w": torch.ones(2)}}, final)
    assert torch.equal(load_checkpoint(final)["model_state"]["w"], torch.ones(2))
    torch.save({"format_version": FORMAT_VERSION}, final)
    with pytest.raises(CheckpointError, match="model_state"):
        load_checkpoint(final)


def test_missing_or_non_dict_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_resume_from_a_bad_checkpoint_fails_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint_epoch_1.pt"
    torch.save({"x": NotATensor()}, bad)
    with pytest.raises(CheckpointError, match="pickled objects"):
        make_trainer(None).fit(*make_data(), resume_from=bad)


@pytest.mark.parametrize("keep_last", [1, 2])
def test_keep_last_keeps_exactly_k(tmp_path: Path, keep_last: int) -> None:
    make_trainer(tmp_path, keep_last=keep_last).fit(*make_data())
    kept = [e for e, _ in list_checkpoints(tmp_path)]
    assert kept == list(range(EPOCHS - keep_last + 1, EPOCHS + 1))
    assert len(list(tmp_path.iterdir())) == keep_last


@pytest.mark.parametrize("target", ["torch.save", "os.replace"])
def test_crash_mid_save_leaves_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    make_trainer(tmp_path, epochs=1).fit(*make_data())
    previous = checkpoint_path(tmp_path, 1)
    before = previous.read_bytes()

    real_save, real_replace = torch.save, os.replace

    def crashing_save(obj, f, *args, **kwargs):  # write part of the file, then die
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt("killed mid-save")

    def crashing_replace(src, dst):
        raise KeyboardInterrupt("killed before rename")

    if target == "torch.save":
        monkeypatch.setattr(torch, "save", crashing_save)
    else:
        monkeypatch.setattr(os, "replace", crashing_replace)
    trainer = make_trainer(tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(*make_data(), resume_from=previous)
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(os, "replace", real_replace)

    assert previous.read_bytes() == before
    assert load_checkpoint(previous)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_1.pt"]


def test_check_plain_names_the_offending_key() -> None:
    check_plain({"a": [1, 2.0, "s", None, True, (torch.zeros(2),)], 3: {"b": torch.ones(1)}})
    with pytest.raises(TypeError, match=r"state\['a'\]\[1\]"):
        check_plain({"a": [1, np.zeros(2)]}, "state")
    with pytest.raises(TypeError, match="Path"):
        check_plain({"p": Path("x")})


def test_writer_snapshots_state_at_submit_and_reports_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = torch.zeros(3)
    layer = torch.nn.Linear(2, 2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    trained_on = threading.Event()
    real_save = checkpoint_module.save_checkpoint

    def save_after_training_moved_on(*args):
        assert trained_on.wait(timeout=10)
        return real_save(*args)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_after_training_moved_on)
    with CheckpointWriter() as writer:
        state = {"epoch": 1, "w": weights, "same": weights, "model_state": layer.state_dict()}
        path = writer.submit(state, tmp_path, None)
        with torch.no_grad():  # training goes on while the write waits
            weights += 1.0
            layer.weight += 1.0
        trained_on.set()
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", real_save)
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["w"], torch.zeros(3))
    assert saved["w"].untyped_storage().data_ptr() == saved["same"].untyped_storage().data_ptr()
    assert all(torch.equal(saved["model_state"][k], v) for k, v in before.items())
    assert saved["model_state"]._metadata == layer.state_dict()._metadata

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"), CheckpointWriter() as writer:
        writer.submit({"epoch": 2}, tmp_path, None)
    # An exception already leaving the block wins over the writer's own error.
    with pytest.raises(ValueError, match="training failed"), CheckpointWriter() as writer:
        writer.submit({"epoch": 3}, tmp_path, None)
        raise ValueError("training failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_1.pt"]


def test_a_state_that_could_not_be_read_back_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"checkpoint\['scheduler_state'\]\['x'\]"):
        save_checkpoint({"epoch": 1, "scheduler_state": {"x": np.float64(1.0)}}, tmp_path, None)
    assert list(tmp_path.iterdir()) == []
