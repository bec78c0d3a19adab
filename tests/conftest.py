"""Shared fixtures: tiny canonical datasets, the PhysioNet directory, a Hydra compose helper."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoor_study.data.schema import ClinicalDataset

REPO_ROOT = Path(__file__).resolve().parent.parent
PHYSIONET_ENV = "BACKDOOR_STUDY_PHYSIONET_DIR"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Tracking is on by default (tracking=mlflow); only the tracking tests pay for a store.
os.environ.setdefault("BACKDOOR_STUDY_TRACKING", "none")
torch.set_num_threads(1)  # the machines are shared: keep tests from fighting over cores


def physionet_dir() -> Path:
    """Where the PhysioNet 2012 files are: $BACKDOOR_STUDY_PHYSIONET_DIR or ../shared/data/physionet2012."""
    return Path(
        os.environ.get(PHYSIONET_ENV, REPO_ROOT.parent / "shared" / "data" / "physionet2012")
    )


@pytest.fixture(scope="session")
def physionet_root() -> Path:
    root = physionet_dir()
    if not (root / "set-a.tar.gz").exists() or not (root / "Outcomes-a.txt").exists():
        pytest.skip(
            f"PhysioNet 2012 files not found in {root} (set {PHYSIONET_ENV} to the directory holding "
            "set-a.tar.gz and Outcomes-a.txt; download them from PhysioNet's challenge-2012 page)"
        )
    return root


def make_tiny_dataset(
    n: int = 200,
    t: int = 12,
    variables: tuple[str, ...] = ("HR", "SysABP", "Temp", "Lactate", "Creatinine"),
    seed: int = 0,
    prevalence: float = 0.3,
    n_classes: int = 2,
) -> ClinicalDataset:
    """A small learnable cohort in canonical form: label 1 stays have a higher HR late in the stay."""
    rng = np.random.default_rng(seed)
    f = len(variables)
    y = (
        (rng.random(n) < prevalence).astype(np.int64)
        if n_classes == 2
        else rng.integers(0, n_classes, n)
    )
    base = np.array([80.0, 120.0, 37.0, 1.5, 1.0][:f] + [50.0] * max(0, f - 5), dtype=np.float32)
    scale = np.array([10.0, 15.0, 0.5, 0.8, 0.4][:f] + [5.0] * max(0, f - 5), dtype=np.float32)
    x = base + scale * rng.standard_normal((n, t, f)).astype(np.float32)
    x[:, t // 2 :, 0] += (15.0 * y)[:, None]
    mask = rng.random((n, t, f)) < 0.8
    mask[:, :, 0] = True
    x = np.where(mask, x, np.nan).astype(np.float32)
    return ClinicalDataset(
        name="tiny",
        x=x,
        mask=mask,
        static_num=np.stack([rng.normal(65, 15, n), rng.normal(80, 20, n)], axis=1).astype(
            np.float32
        ),
        static_cat=np.stack([rng.integers(0, 2, n), rng.integers(-1, 3, n)], axis=1).astype(
            np.int64
        ),
        y=y,
        stay_id=np.arange(1000, 1000 + n, dtype=np.int64),
        patient_id=np.arange(n, dtype=np.int64) // 2,
        variables=list(variables),
        units=["u"] * f,
        static_num_names=["Age", "Weight"],
        static_cat_names=["Gender", "ICUType"],
        static_cat_levels=[["female", "male"], ["CCU", "CSRU", "MICU"]],
        class_names=["survived", "died"]
        if n_classes == 2
        else [f"class_{k}" for k in range(n_classes)],
    )


@pytest.fixture
def tiny_dataset() -> ClinicalDataset:
    return make_tiny_dataset()
