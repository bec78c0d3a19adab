"""The training loop: in-memory minibatches, per-epoch checkpoints, exact resume, best-epoch choice.

Owns one model's optimisation from a seeded, built model to its best-epoch weights. It reads
batches as dicts of tensors (see :mod:`backdoor_study.models.base`), writes only
``checkpoint_epoch_{N}.pt`` files to ``checkpoint_dir``, and computes validation AUROC with
:func:`backdoor_study.metrics.auroc`. Run directories, final weights and reports belong to the
entry points, not here.

Exact resume: a checkpoint is written at the end of each epoch, after validation and the scheduler
step, holding everything the next epoch depends on: weights, optimizer and scheduler state, the
best-so-far weights and early-stopping counter, the history, and every RNG state (dropout draws
from torch's global generator; the shuffle order from the trainer's own generator). Validation runs
in eval mode under ``no_grad`` and draws no random numbers, so a run resumed from any checkpoint
ends bitwise identical to the uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backdoor_study.metrics import auroc
from backdoor_study.models.base import Batch
from backdoor_study.training.checkpoint import (
    TRAINING_KEYS,
    CheckpointError,
    CheckpointWriter,
    check_plain,
    load_checkpoint,
)
from backdoor_study.training.rng import capture_rng_state, restore_rng_state

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_SHUFFLE = "shuffle"  # name of the trainer's generator in the saved RNG state


# Which weights fit() ends with: the epoch with the best validation AUROC, or the last epoch.
# Selection on clean validation data is itself a (weak) defence: it can stop before a backdoor is
# learned, which is why attack studies may want "last".
SELECTIONS = ("best", "last")


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    ``history`` holds one dict per completed epoch (``epoch``, ``train_loss``, ``val_loss``,
    ``val_auroc``, ``lr``, ``seconds``), including epochs run before a resume. ``epochs_run`` is
    the number of completed epochs; ``best_epoch`` is 1-based.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_auroc: float = float("nan")
    epochs_run: int = 0
    stopped_early: bool = False


def class_weights_balanced(y: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    """``n_samples / (n_classes * count_k)`` per class, as sklearn's ``'balanced'``; (C,) float32."""
    from sklearn.utils.class_weight import compute_class_weight

    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    counts = np.bincount(y, minlength=n_classes)
    if counts.size > n_classes or (counts == 0).any():
        raise ValueError(
            f"class weights need every class in 0..{n_classes - 1} present in the training labels; "
            f"counts per class: {counts.tolist()}"
        )
    w = compute_class_weight("balanced", classes=np.arange(n_classes), y=y)
    return torch.as_tensor(w, dtype=torch.float32)


def _batch_to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


def _batch_size_of(batch: Batch) -> int:
    sizes = {k: v.shape[0] for k, v in batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch tensors disagree on the number of samples: {sizes}")
    return next(iter(sizes.values()))


@torch.no_grad()
def _logits(
    model: nn.Module,
    batch: Batch,
    batch_size: int,
    device: torch.device,
    *,
    penultimate: bool = False,
) -> torch.Tensor:
    """(N, C) logits (or (N, D) ``penultimate()`` features) in eval mode, chunk by chunk; leaves
    the model's train/eval mode as it was."""
    was_training = model.training
    model.eval()
    fn = model.penultimate if penultimate else model
    try:
        n = _batch_size_of(batch)
        chunks = [
            fn({k: v[i : i + batch_size].to(device) for k, v in batch.items()})
            for i in range(0, n, batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def predict_proba(
    model: nn.Module, batch: Batch, *, batch_size: int, device: torch.device | str
) -> np.ndarray:
    """(N, C) float64 softmax probabilities: eval mode, no gradients, no random draws."""
    device = torch.device(device)
    model.to(device)
    logits = _logits(model, batch, batch_size, device)
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def penultimate_features(
    model: nn.Module, batch: Batch, *, batch_size: int, device: torch.device | str
) -> np.ndarray:
    """(N, D) float64 ``model.penultimate(batch)``: the representation the detectors read (never
    the logits). Eval mode, no gradients, chunk by chunk."""
    device = torch.device(device)
    model.to(device)
    return _logits(model, batch, batch_size, device, penultimate=True).double().cpu().numpy()


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _BestSoFar:
    """Best-epoch selection and the early-stopping counter: state a checkpoint must carry."""

    epoch: int = 0
    val_auroc: float = float("nan")
    model_state: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0

    def update(self, epoch: int, val_auroc: float, model: nn.Module) -> None:
        """Keep a copy of ``model`` if ``val_auroc`` beats the best (ties and NaN do not)."""
        score = -math.inf if math.isnan(val_auroc) else val_auroc
        best = -math.inf if math.isnan(self.val_auroc) else self.val_auroc
        if self.model_state is None or score > best:
            self.epoch, self.val_auroc, self.model_state = epoch, val_auroc, _clone_state(model)
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "val_auroc": self.val_auroc,
            "model_state": self.model_state,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], device: torch.device) -> _BestSoFar:
        return cls(
            epoch=int(saved["epoch"]),
            val_auroc=float(saved["val_auroc"]),
            model_state={k: v.to(device) for k, v in saved["model_state"].items()},
            epochs_without_improvement=int(saved["epochs_without_improvement"]),
        )


class Trainer:
    """Minibatch training of a :class:`~backdoor_study.models.base.ClinicalModel` on in-memory data.

    ``optimizer_factory(params)`` and ``scheduler_factory(optimizer)`` are the ``_partial_``
    nodes of the optimizer and scheduler configs; the scheduler steps once per epoch. The best
    epoch is the one with the highest validation AUROC (ties go to the earlier epoch; NaN never
    improves); ``early_stopping_patience`` epochs without improvement stop training. ``metadata``
    (plain values only, e.g. a config digest) is stored in every checkpoint. Checkpoints are
    written on a background thread (see :class:`CheckpointWriter`); all are on disk when
    :meth:`fit` returns, and ``last_checkpoint`` names the newest.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory | None,
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        checkpoint_dir: Path | None,
        keep_last: int | None = None,
        grad_clip: float | None = None,
        class_weights: torch.Tensor | None = None,
        early_stopping_patience: int | None = None,
        progress: bool = False,
        metadata: dict[str, Any] | None = None,
        selection: str = "best",
    ) -> None:
        for key, value, ok, expected in [
            ("selection", selection, selection in SELECTIONS, f"one of {list(SELECTIONS)}"),
            ("epochs", epochs, epochs >= 1, "an integer >= 1"),
            ("batch_size", batch_size, batch_size >= 1, "an integer >= 1"),
            ("keep_last", keep_last, keep_last is None or keep_last >= 1, "None or >= 1"),
            ("grad_clip", grad_clip, grad_clip is None or grad_clip > 0, "None or > 0"),
            (
                "early_stopping_patience",
                early_stopping_patience,
                early_stopping_patience is None or early_stopping_patience >= 1,
                "None or an integer >= 1",
            ),
        ]:
            if not ok:
                raise ValueError(f"{key}={value!r} is invalid: expected {expected}")
        metadata = dict(metadata or {})
        check_plain(metadata, "metadata")
        self.model = model
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.keep_last = keep_last
        self.grad_clip = grad_clip
        self.class_weights = (
            None if class_weights is None else class_weights.detach().to(torch.float32).cpu()
        )
        self.early_stopping_patience = early_stopping_patience
        self.progress = progress
        self.metadata = metadata
        self.selection = selection
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train: Batch,
        y_train: torch.Tensor,
        val: Batch,
        y_val: torch.Tensor,
        resume_from: Path | None = None,
    ) -> FitResult:
        """Train for ``epochs`` (or until early stopping); the model ends with the best weights.

        ``resume_from`` continues from that checkpoint's next epoch, restoring every state.
        """
        n_train, n_val = _batch_size_of(train), _batch_size_of(val)
        if len(y_train) != n_train or len(y_val) != n_val:
            raise ValueError(
                f"labels do not match the batches: y_train has {len(y_train)} for {n_train} "
                f"samples, y_val has {len(y_val)} for {n_val}"
            )
        device = self.device
        model = self.model.to(device)
        train, val = _batch_to(train, device), _batch_to(val, device)
        y_train = y_train.to(device=device, dtype=torch.long)
        y_val = y_val.to(device=device, dtype=torch.long)
        weight = None if self.class_weights is None else self.class_weights.to(device)

        optimizer = self.optimizer_factory(model.parameters())
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        shuffle = torch.Generator(device="cpu")
        shuffle.manual_seed(self.seed)
        fingerprint = self._fingerprint(optimizer, scheduler, n_train, n_val)

        history: list[dict[str, Any]] = []
        best = _BestSoFar()
        epoch, stopped_early = 0, False
        if resume_from is not None:
            ckpt = load_checkpoint(resume_from, required=TRAINING_KEYS)
            self._check_compatible(resume_from, ckpt["trainer"], fingerprint)
            try:
                model.load_state_dict(ckpt["model_state"])
                optimizer.load_state_dict(ckpt["optimizer_state"])
                if scheduler is not None:
                    scheduler.load_state_dict(ckpt["scheduler_state"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise CheckpointError(resume_from, f"state does not fit this run: {e}") from e
            best = _BestSoFar.from_checkpoint(ckpt["best"], device)
            history = [dict(h) for h in ckpt["history"]]
            epoch, stopped_early = int(ckpt["epoch"]), bool(ckpt["stopped_early"])
            # Last, so nothing above can perturb the restored streams.
            restore_rng_state(ckpt["rng"], {_SHUFFLE: shuffle})

        todo = not stopped_early and epoch < self.epochs
        with CheckpointWriter() as writer, self._progress_bar(epoch if todo else None) as bar:
            while not stopped_early and epoch < self.epochs:
                epoch += 1
                t0 = time.perf_counter()
                lr = float(optimizer.param_groups[0]["lr"])
                perm = torch.randperm(n_train, generator=shuffle).to(device)
                train_loss = self._train_epoch(model, optimizer, train, y_train, perm, weight)
                val_loss, val_auroc = self._validate(model, val, y_val, weight)
                best.update(epoch, val_auroc, model)
                stopped_early = (
                    self.early_stopping_patience is not None
                    and best.epochs_without_improvement >= self.early_stopping_patience
                    and epoch < self.epochs
                )
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(val_loss)
                elif scheduler is not None:
                    scheduler.step()
                history.append(
                    {
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "val_auroc": val_auroc,
                        "lr": lr,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                if self.checkpoint_dir is not None:
                    state = {
                        "epoch": epoch,
                        # On an improving epoch the two are equal: the file holds them once.
                        "model_state": best.model_state
                        if best.epoch == epoch
                        else model.state_dict(),
                        "optimizer_state": optimizer.state_dict(),
                        "scheduler_state": None if scheduler is None else scheduler.state_dict(),
                        "best": best.to_checkpoint(),
                        "history": history,
                        "stopped_early": stopped_early,
                        "rng": capture_rng_state({_SHUFFLE: shuffle}, cuda=device.type == "cuda"),
                        "trainer": {"epochs": self.epochs, **fingerprint},
                        "metadata": self.metadata,
                    }
                    self.last_checkpoint = writer.submit(state, self.checkpoint_dir, self.keep_last)
                if bar is not None:
                    bar.set_postfix(loss=f"{train_loss:.4f}", val_auroc=f"{val_auroc:.4f}")
                    bar.update(1)

        if self.selection == "best" and best.model_state is not None:
            model.load_state_dict(best.model_state)
        return FitResult(
            history=history,
            best_epoch=best.epoch,
            best_val_auroc=best.val_auroc,
            epochs_run=len(history),
            stopped_early=stopped_early,
        )

    # ------------------------------------------------------------------ internals
    def _train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train: Batch,
        y_train: torch.Tensor,
        perm: torch.Tensor,
        weight: torch.Tensor | None,
    ) -> float:
        """One pass over ``perm``; returns the sample-weighted mean of the minibatch losses."""
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        total = torch.zeros((), dtype=torch.float64, device=perm.device)
        n = perm.numel()
        for start in range(0, n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            batch = {k: v.index_select(0, idx) for k, v in train.items()}
            loss = F.cross_entropy(model(batch), y_train.index_select(0, idx), weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, self.grad_clip)
            optimizer.step()
            total += loss.detach() * idx.numel()
        return float(total) / n

    def _validate(
        self, model: nn.Module, val: Batch, y_val: torch.Tensor, weight: torch.Tensor | None
    ) -> tuple[float, float]:
        """Validation loss and AUROC: eval mode, no gradients, no random draws."""
        logits = _logits(model, val, self.batch_size, self.device)
        val_loss = float(F.cross_entropy(logits, y_val, weight=weight))
        proba = torch.softmax(logits.double(), dim=1).cpu().numpy()
        return val_loss, auroc(y_val.cpu().numpy(), proba)

    def _progress_bar(self, start_epoch: int | None) -> Any:
        """A tqdm bar over epochs from ``start_epoch``; a no-op when off or nothing is left to do."""
        if not self.progress or start_epoch is None:
            return contextlib.nullcontext()
        from tqdm.auto import tqdm

        return tqdm(total=self.epochs, initial=start_epoch, desc="train", unit="epoch")

    def _fingerprint(
        self, optimizer: torch.optim.Optimizer, scheduler: Any, n_train: int, n_val: int
    ) -> dict[str, Any]:
        """Settings that must match for a resume to continue the same trajectory."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n_train": n_train,
            "n_val": n_val,
            "grad_clip": self.grad_clip,
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
            "early_stopping_patience": self.early_stopping_patience,
            "optimizer": type(optimizer).__name__,
            "scheduler": None if scheduler is None else type(scheduler).__name__,
        }

    @staticmethod
    def _check_compatible(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
        diffs = [
            f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
            for k, v in current.items()
            if saved.get(k) != v
        ]
        if diffs:
            raise CheckpointError(
                path, "it was written by a run with other settings (" + "; ".join(diffs) + ")"
            )
