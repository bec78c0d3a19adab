"""Train / validation / test splits: stratified on the label, by patient, deterministic for a seed.

No patient ever appears in two splits. Stratification is done on patients (a patient's label is
the maximum over their stays), which keeps the class balance of each split close to the cohort's.
Stays marked ``external_test`` (external validation, e.g. PhysioNet set B) form the test split as a
whole; the remaining stays are then split into train and validation only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from backdoor_study.data.schema import ClinicalDataset, DataValidationError
from backdoor_study.utils import sha256_json

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Splits:
    """Index arrays (int64, sorted) into the dataset, one per split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    external_test: bool = False

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; valid splits are {list(SPLIT_NAMES)}")
        return getattr(self, name)

    def to_json(self, ds: ClinicalDataset) -> dict[str, Any]:
        """The stay ids of each split (not positions: ids survive re-ordering), plus a digest."""
        body = {name: ds.stay_id[self[name]].tolist() for name in SPLIT_NAMES}
        return {
            "dataset": ds.name,
            "dataset_digest": ds.digest(),
            "seed": self.seed,
            "external_test": self.external_test,
            "counts": {name: int(self[name].size) for name in SPLIT_NAMES},
            "positives": {name: int(ds.y[self[name]].sum()) for name in SPLIT_NAMES},
            "split_digest": sha256_json(body),
            "stay_ids": body,
        }

    def digest(self, ds: ClinicalDataset) -> str:
        return self.to_json(ds)["split_digest"]

    @classmethod
    def from_json(cls, obj: dict[str, Any], ds: ClinicalDataset) -> Splits:
        """Positions of the saved stay ids in ``ds``; every id must be present."""
        pos = {int(s): i for i, s in enumerate(ds.stay_id.tolist())}
        arrays = {}
        for name in SPLIT_NAMES:
            ids = obj["stay_ids"][name]
            missing = [s for s in ids if int(s) not in pos]
            if missing:
                raise DataValidationError(
                    f"splits.json: {len(missing)} {name} stay ids not in dataset, e.g. {missing[:5]}"
                )
            arrays[name] = np.sort(np.array([pos[int(s)] for s in ids], dtype=np.int64))
        return cls(
            **arrays, seed=int(obj["seed"]), external_test=bool(obj.get("external_test", False))
        )


def make_splits(
    ds: ClinicalDataset, split_cfg: Any, external_test: np.ndarray | None = None
) -> Splits:
    """Split ``ds`` by patient, stratified on the label, deterministically for ``split_cfg.seed``.

    ``split_cfg`` has ``train``, ``val``, ``test`` fractions and ``seed``. With ``external_test``
    (bool per stay), those stays are the test split and the rest is divided train : val in the ratio
    of the configured fractions.
    """
    seed = int(split_cfg.seed)
    fr_train, fr_val, fr_test = float(split_cfg.train), float(split_cfg.val), float(split_cfg.test)
    all_idx = np.arange(ds.n_stays)
    if external_test is not None:
        external_test = np.asarray(external_test, dtype=bool)
        test = all_idx[external_test]
        pool = all_idx[~external_test]
        if test.size == 0 or pool.size == 0:
            raise DataValidationError("external_test must mark some, but not all, stays")
        fr_val = fr_val / (fr_train + fr_val)
        fr_test = 0.0
    else:
        pool = all_idx
        test = np.empty(0, dtype=np.int64)

    patients, inverse = np.unique(ds.patient_id[pool], return_inverse=True)
    patient_label = np.zeros(patients.size, dtype=np.int64)
    np.maximum.at(patient_label, inverse, ds.y[pool])
    rng = np.random.RandomState(seed)  # sklearn's splitters take a RandomState / int

    def _split(items: np.ndarray, labels: np.ndarray, frac: float) -> tuple[np.ndarray, np.ndarray]:
        stratify = labels if np.bincount(labels).min() >= 2 else None
        return train_test_split(items, test_size=frac, random_state=rng, stratify=stratify)

    p_idx = np.arange(patients.size)
    if fr_test > 0:
        p_rest, p_test = _split(p_idx, patient_label, fr_test)
        test = pool[np.isin(inverse, p_test)]
    else:
        p_rest = p_idx
    p_train, p_val = _split(p_rest, patient_label[p_rest], fr_val / (1.0 - fr_test))
    splits = Splits(
        train=np.sort(pool[np.isin(inverse, p_train)]),
        val=np.sort(pool[np.isin(inverse, p_val)]),
        test=np.sort(test),
        seed=seed,
        external_test=external_test is not None,
    )
    check_splits(ds, splits)
    return splits


def holdout_split(
    ds: ClinicalDataset, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A train / test split (no validation split), by patient and stratified on the label like
    :func:`make_splits`: sorted int64 (train, test) positions, deterministic for ``seed``.
    The classic sklearn study uses it (70/30 by default); both splits hold every class."""
    if ds.n_classes < 2 or np.unique(ds.y).size < 2:
        raise DataValidationError(
            f"'{ds.name}' holds a single class ({np.unique(ds.y).tolist()}): a classifier needs "
            "at least two"
        )
    patients, inverse = np.unique(ds.patient_id, return_inverse=True)
    patient_label = np.zeros(patients.size, dtype=np.int64)
    np.maximum.at(patient_label, inverse, ds.y)
    stratify = patient_label if np.bincount(patient_label).min() >= 2 else None
    p_train, p_test = train_test_split(
        np.arange(patients.size), test_size=test_fraction, random_state=seed, stratify=stratify
    )
    train = np.flatnonzero(np.isin(inverse, p_train)).astype(np.int64)
    test = np.flatnonzero(np.isin(inverse, p_test)).astype(np.int64)
    for name, idx in (("train", train), ("test", test)):
        if np.unique(ds.y[idx]).size < 2:
            raise DataValidationError(
                f"the {name} split of '{ds.name}' ({idx.size} stays) holds a single class; "
                "use a larger dataset or another test_size"
            )
    return train, test


def check_splits(ds: ClinicalDataset, splits: Splits) -> None:
    """Every split non-empty with at least two classes; no patient in two splits."""
    seen: dict[str, set[int]] = {}
    for name in SPLIT_NAMES:
        idx = splits[name]
        if idx.size == 0:
            raise DataValidationError(
                f"the {name} split of '{ds.name}' is empty; check data.split fractions"
            )
        classes = np.unique(ds.y[idx])
        if classes.size < 2:
            raise DataValidationError(
                f"the {name} split of '{ds.name}' holds a single class ({ds.class_names[classes[0]]!r}, "
                f"{idx.size} stays); use a larger dataset or other data.split fractions"
            )
        seen[name] = set(ds.patient_id[idx].tolist())
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = seen[a] & seen[b]
        if both:
            raise DataValidationError(
                f"{len(both)} patient(s) in both the {a} and {b} splits, e.g. {sorted(both)[:5]}"
            )
