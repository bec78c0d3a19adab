"""Training: the trainer, its checkpoints (atomic, ``weights_only``-safe) and RNG state for resume."""

from backdoor_study.training.checkpoint import (
    TRAINING_KEYS,
    CheckpointError,
    CheckpointWriter,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    write_plain_state,
)
from backdoor_study.training.rng import (
    capture_rng_state,
    resolve_device,
    restore_rng_state,
    seed_everything,
)
from backdoor_study.training.trainer import (
    FitResult,
    Trainer,
    class_weights_balanced,
    penultimate_features,
    predict_proba,
)

__all__ = [
    "TRAINING_KEYS",
    "CheckpointError",
    "CheckpointWriter",
    "FitResult",
    "Trainer",
    "capture_rng_state",
    "checkpoint_path",
    "class_weights_balanced",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "penultimate_features",
    "predict_proba",
    "resolve_device",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "write_plain_state",
]
