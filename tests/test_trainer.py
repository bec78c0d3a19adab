"""Trainer behaviour a study relies on: bitwise-exact resume, best-epoch choice, early stopping,
class weights, no RNG use outside training, and the helpers the entry points call."""

from __future__ import annotations

import functools
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from backdoor_study.models.base import Batch, ClinicalModel, InputSpec
from backdoor_study.training import (
    CheckpointError,
    Trainer,
    checkpoint_path,
    class_weights_balanced,
    load_checkpoint,
    predict_proba,
    resolve_device,
    seed_everything,
)

torch.set_num_threads(1)

SPEC = InputSpec(
    n_steps=6, n_features=3, n_static_num=2, static_cat_cardinalities=(3,), n_classes=2
)
EPOCHS = 5


class TinyNet(ClinicalModel):
    """A small model with dropout, so resume must restore torch's global RNG to be exact."""

    def __init__(self, spec: InputSpec, hidden: int = 16, dropout: float = 0.3) -> None:
        super().__init__(spec)
        n_in = (
            2 * spec.n_steps * spec.n_features
            + spec.n_static_num
            + len(spec.static_cat_cardinalities)
        )
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, spec.n_classes)

    def penultimate(self, batch: Batch) -> torch.Tensor:
        parts = [
            batch["x"].flatten(1),
            batch["mask"].flatten(1),
            batch["static_num"],
            batch["static_cat"].float(),
        ]
        return self.body(torch.cat(parts, dim=1))


def make_batch(n: int, seed: int) -> tuple[Batch, torch.Tensor]:
    """A learnable batch: class 1 has a raised first variable late in the stay."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.3).long()
    x = torch.randn(n, SPEC.n_steps, SPEC.n_features, generator=g)
    x[:, SPEC.n_steps // 2 :, 0] += 0.8 * y[:, None].float()
    batch = {
        "x": x,
        "mask": (torch.rand(n, SPEC.n_steps, SPEC.n_features, generator=g) < 0.8).float(),
        "static_num": torch.randn(n, SPEC.n_static_num, generator=g),
        "static_cat": torch.randint(0, 3, (n, 1), generator=g),
    }
    return batch, y


def make_data() -> tuple[Batch, torch.Tensor, Batch, torch.Tensor]:
    train, y_train = make_batch(150, seed=1)
    val, y_val = make_batch(60, seed=2)
    return train, y_train, val, y_val


def make_trainer(checkpoint_dir: Path | None, seed: int = 0, **overrides: Any) -> Trainer:
    """What the entry point does: seed, build the model, then hand it to a Trainer."""
    seed_everything(seed)
    kwargs: dict[str, Any] = dict(
        epochs=EPOCHS,
        batch_size=32,
        seed=seed,
        device="cpu",
        checkpoint_dir=checkpoint_dir,
        grad_clip=1.0,
        metadata={"config_digest": "abc123", "model": "tiny"},
    )
    kwargs.update(overrides)
    return Trainer(
        TinyNet(SPEC),
        functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=1e-4),
        functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=EPOCHS),
        **kwargs,
    )


def without_seconds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History minus wall-clock time, the one field that cannot repeat across runs."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"parameter {k} differs"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run whose checkpoints the resume tests start from."""
    ckpt_dir = tmp_path_factory.mktemp("full")
    trainer = make_trainer(ckpt_dir)
    result = trainer.fit(*make_data())
    return {"dir": ckpt_dir, "trainer": trainer, "result": result}


@pytest.mark.parametrize("resume_epoch", [1, 2, 4])
def test_resume_is_bitwise_identical(
    full_run: dict[str, Any], tmp_path: Path, resume_epoch: int
) -> None:
    src = checkpoint_path(full_run["dir"], resume_epoch)
    resumed_ckpt = shutil.copy(src, tmp_path / src.name)
    # A differently seeded model and global RNG: fit must restore everything from the checkpoint.
    trainer = make_trainer(tmp_path, seed=0)
    seed_everything(999)
    random.random()
    result = trainer.fit(*make_data(), resume_from=Path(resumed_ckpt))

    full = full_run["result"]
    assert_same_weights(trainer.model, full_run["trainer"].model)
    assert without_seconds(result.history) == without_seconds(full.history)
    assert result.history[:resume_epoch] == full.history[:resume_epoch]  # restored verbatim
    assert (result.best_epoch, result.best_val_auroc, result.epochs_run, result.stopped_early) == (
        full.best_epoch,
        full.best_val_auroc,
        full.epochs_run,
        full.stopped_early,
    )
    # The resumed run's later checkpoints equal the uninterrupted run's, state for state.
    a = load_checkpoint(checkpoint_path(tmp_path, EPOCHS))
    b = load_checkpoint(checkpoint_path(full_run["dir"], EPOCHS))
    for key in ("model_state", "optimizer_state", "scheduler_state", "rng"):
        assert_nested_equal(a[key], b[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_restores_cuda_rng(tmp_path: Path) -> None:
    full = make_trainer(tmp_path / "full", device="cuda")
    full_result = full.fit(*make_data())
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "full", 2))
    assert ckpt["rng"]["cuda"] is not None
    resumed = make_trainer(tmp_path / "resumed", device="cuda")
    result = resumed.fit(*make_data(), resume_from=checkpoint_path(tmp_path / "full", 2))
    assert without_seconds(result.history) == without_seconds(full_result.history)
    assert_same_weights(resumed.model, full.model)


def assert_nested_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_nested_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_full_run_reports_history_and_ends_on_best_weights(full_run: dict[str, Any]) -> None:
    result = full_run["result"]
    assert result.epochs_run == EPOCHS and not result.stopped_early
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))
    assert set(result.history[0]) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_auroc",
        "lr",
        "seconds",
    }
    aurocs = [h["val_auroc"] for h in result.history]
    assert result.best_val_auroc == max(aurocs)
    assert result.best_epoch == aurocs.index(max(aurocs)) + 1  # first of any ties
    assert result.history[0]["lr"] == pytest.approx(1e-2)
    assert result.history[-1]["lr"] < result.history[0]["lr"]  # the cosine schedule stepped
    best = load_checkpoint(checkpoint_path(full_run["dir"], result.best_epoch))["model_state"]
    for k, v in full_run["trainer"].model.state_dict().items():
        assert torch.equal(v, best[k])
    assert load_checkpoint(checkpoint_path(full_run["dir"], EPOCHS))["metadata"] == {
        "config_digest": "abc123",
        "model": "tiny",
    }


def test_best_epoch_ties_and_early_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = iter([0.6, 0.8, 0.8, 0.7, 0.75, 0.9, 0.9])
    monkeypatch.setattr("backdoor_study.training.trainer.auroc", lambda y, p: next(scripted))
    trainer = make_trainer(tmp_path, epochs=7, early_stopping_patience=3)
    result = trainer.fit(*make_data())
    # Epoch 3 ties epoch 2 (no improvement); epochs 3, 4, 5 without improvement -> stop after 5.
    assert result.best_epoch == 2 and result.best_val_auroc == 0.8
    assert result.stopped_early and result.epochs_run == 5
    assert [h["val_auroc"] for h in result.history] == [0.6, 0.8, 0.8, 0.7, 0.75]
    epoch2 = load_checkpoint(checkpoint_path(tmp_path, 2))["model_state"]
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, epoch2[k])

    # Resuming a run that already stopped trains nothing and returns the same answer.
    again = make_trainer(tmp_path / "again", epochs=7, early_stopping_patience=3)
    resumed = again.fit(*make_data(), resume_from=checkpoint_path(tmp_path, 5))
    assert resumed.history == result.history
    assert (resumed.best_epoch, resumed.stopped_early) == (2, True)
    assert_same_weights(again.model, trainer.model)
    assert not (tmp_path / "again").exists()

    # Resuming mid-patience keeps the early-stopping counter: it still stops after epoch 5.
    scripted = iter([0.7, 0.75, 0.9, 0.9])
    monkeypatch.setattr("backdoor_study.training.trainer.auroc", lambda y, p: next(scripted))
    mid = make_trainer(tmp_path / "mid", epochs=7, early_stopping_patience=3)
    resumed = mid.fit(*make_data(), resume_from=checkpoint_path(tmp_path, 3))
    assert without_seconds(resumed.history) == without_seconds(result.history)
    assert (resumed.best_epoch, resumed.stopped_early, resumed.epochs_run) == (2, True, 5)
    assert_same_weights(mid.model, trainer.model)


def test_nan_auroc_never_counts_as_improvement(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([float("nan"), 0.55, float("nan")])
    monkeypatch.setattr("backdoor_study.training.trainer.auroc", lambda y, p: next(scripted))
    result = make_trainer(None, epochs=3).fit(*make_data())
    assert (result.best_epoch, result.best_val_auroc) == (2, 0.55)


def test_class_weights_change_the_loss() -> None:
    plain = make_trainer(None, epochs=1).fit(*make_data())
    y_train = make_data()[1]
    weights = class_weights_balanced(y_train, 2)
    weighted = make_trainer(None, epochs=1, class_weights=weights).fit(*make_data())
    assert weighted.history[0]["train_loss"] != plain.history[0]["train_loss"]
    assert weighted.history[0]["val_loss"] != plain.history[0]["val_loss"]


def test_class_weights_balanced_matches_sklearn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 1, 2, 2])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    got = class_weights_balanced(torch.from_numpy(y), 3)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="every class"):
        class_weights_balanced(np.array([0, 0, 1]), 3)


def test_resume_refuses_a_run_with_other_settings(full_run: dict[str, Any]) -> None:
    trainer = make_trainer(None, batch_size=16)
    with pytest.raises(CheckpointError, match="batch_size"):
        trainer.fit(*make_data(), resume_from=checkpoint_path(full_run["dir"], 2))


def test_prediction_is_eval_mode_and_draws_no_random_numbers() -> None:
    seed_everything(3)
    model = TinyNet(SPEC)
    batch, _ = make_batch(40, seed=5)
    before = torch.get_rng_state()
    p1 = predict_proba(model, batch, batch_size=7, device="cpu")
    p2 = predict_proba(model, batch, batch_size=40, device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training  # mode restored
    assert p1.shape == (40, 2) and p1.dtype == np.float64
    np.testing.assert_allclose(p1.sum(axis=1), 1.0)
    np.testing.assert_allclose(p1, p2, rtol=1e-6)  # no dropout at prediction time


def test_seed_everything_repeats_every_generator() -> None:
    def draw() -> tuple[float, float, torch.Tensor]:
        return random.random(), float(np.random.rand()), torch.rand(3)  # noqa: NPY002

    seed_everything(7)
    a = draw()
    seed_everything(7)
    b = draw()
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    assert torch.are_deterministic_algorithms_enabled()


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    make_trainer(None, epochs=1, progress=False).fit(*make_data())
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    make_trainer(None, epochs=1, progress=True).fit(*make_data())
    assert "val_auroc" in capsys.readouterr().err


def test_metadata_must_be_plain_values() -> None:
    with pytest.raises(TypeError, match=r"metadata\['path'\]"):
        make_trainer(None, metadata={"path": Path("/tmp")})


def test_selection_last_keeps_the_final_epoch_weights(tmp_path: Path) -> None:
    """selection='last' ends on the last epoch's weights even when an earlier epoch was best."""
    trainer = make_trainer(tmp_path, epochs=4, selection="last")
    fit = trainer.fit(*make_data())
    final = torch.load(tmp_path / "checkpoint_epoch_4.pt", weights_only=True)["model_state"]
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k].cpu(), final[k]) for k in final)
    assert 1 <= fit.best_epoch <= 4  # still reported
    with pytest.raises(ValueError, match="selection='final' is invalid"):
        make_trainer(None, selection="final")
