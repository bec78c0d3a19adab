"""From a composed config to everything a run trains and is evaluated on.

:func:`prepare` is the one path from config to tensors: load the cohort, split it, poison the
training split, fit preprocessing on the (poisoned) training split, stamp the test set. ``train``,
``eval`` and the later detectors all call it, so a run directory's config and data digest are
enough to rebuild exactly the data a model saw, poisoned samples included.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from backdoor_study.data import LoadedData, load_dataset
from backdoor_study.data.preprocess import Batch, Preprocessor
from backdoor_study.data.schema import ClinicalDataset, DataValidationError
from backdoor_study.data.splits import Splits, make_splits
from backdoor_study.models.base import InputSpec
from backdoor_study.utils import sha256_indices


@dataclass
class Prepared:
    """The data of one run. ``batches``/``labels`` hold train (poisoned), val and test (clean);
    ``test_poisoned`` is the test split with the trigger on every non-target stay (None when the
    attack has no test-time trigger)."""

    loaded: LoadedData
    dataset: ClinicalDataset
    data_digest: str
    splits: Splits
    poison: Any  # backdoor_study.poison.PoisonResult
    preprocessor: Preprocessor
    spec: InputSpec
    batches: dict[str, Batch]
    labels: dict[str, torch.Tensor]
    test_poisoned: Batch | None = None
    triggered_mask: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def has_trigger(self) -> bool:
        return self.test_poisoned is not None


def prepare(cfg: DictConfig, expected_digest: str | None = None) -> Prepared:
    """Build the run's data from ``cfg``; with ``expected_digest`` refuse a dataset that changed."""
    from backdoor_study.poison import poison_dataset, poisoned_test_set

    t0 = time.perf_counter()
    loaded = load_dataset(cfg.data)
    ds = loaded.dataset
    digest = ds.digest()
    if expected_digest is not None and digest != expected_digest:
        raise DataValidationError(
            f"dataset '{ds.name}' has digest {digest[:16]}... but the run recorded {expected_digest[:16]}...: "
            "the data changed since the run, so its results cannot be reproduced from it"
        )
    t1 = time.perf_counter()
    splits = make_splits(ds, cfg.data.split, loaded.external_test)
    poison = poison_dataset(
        ds,
        splits.train,
        attack_cfg=cfg.attack,
        trigger_cfg=cfg.trigger,
        poison_rate=float(cfg.poison_rate),
        source=cfg.poison.source,
        seed=int(cfg.seed),
    )
    excluded = excluded_positions(cfg, int(splits.train.size))
    if excluded is not None:  # a sanitized retrain: the flagged stays leave the training split
        poison = poison.without(excluded, int(splits.train.size))
        splits = dataclasses.replace(splits, train=np.delete(splits.train, excluded))
    t2 = time.perf_counter()
    poisoned = poison.dataset
    pre = Preprocessor().fit(poisoned, splits.train)
    batches = {name: pre.transform(poisoned, splits[name]) for name in ("train", "val", "test")}
    labels = {name: torch.from_numpy(poisoned.y[splits[name]]) for name in ("train", "val", "test")}
    test_poisoned = triggered_mask = None
    if cfg.attack.name == "backdoor" and cfg.trigger.name != "none":
        stamped, triggered_mask = poisoned_test_set(ds, splits.test, poison.trigger)
        test_poisoned = pre.transform(stamped)
    spec = InputSpec(
        n_steps=ds.n_steps,
        n_features=ds.n_features,
        n_static_num=len(ds.static_num_names),
        static_cat_cardinalities=tuple(pre.static_cat_cardinalities),
        n_classes=ds.n_classes,
    )
    t3 = time.perf_counter()
    return Prepared(
        loaded=loaded,
        dataset=ds,
        data_digest=digest,
        splits=splits,
        poison=poison,
        preprocessor=pre,
        spec=spec,
        batches=batches,
        labels=labels,
        test_poisoned=test_poisoned,
        triggered_mask=triggered_mask,
        timings={"load_data_s": t1 - t0, "poison_s": t2 - t1, "preprocess_s": t3 - t2},
    )


def excluded_positions(cfg: DictConfig, n_train: int) -> np.ndarray | None:
    """The training positions a sanitized retrain leaves out (``cfg.sanitize``), or None.

    Read from ``sanitize.exclude_file`` and checked against ``sanitize.exclude_digest``: a changed
    or foreign file is refused, never trained on.
    """
    san = cfg.get("sanitize")
    if san is None:
        return None
    path = Path(str(san.exclude_file))
    if not path.is_file():
        raise FileNotFoundError(
            f"sanitize.exclude_file={str(path)!r}: no such file (it holds the flagged training "
            "positions of the detection this sanitized run was made from; re-run sanitize)"
        )
    excluded = np.load(path, allow_pickle=False)
    if sha256_indices(excluded) != str(san.exclude_digest):
        raise DataValidationError(
            f"sanitize.exclude_file={str(path)!r} changed since the sanitized run was configured "
            f"(digest {sha256_indices(excluded)[:12]}... vs sanitize.exclude_digest="
            f"{str(san.exclude_digest)[:12]}...)"
        )
    excluded = excluded.astype(np.int64)
    if excluded.ndim != 1 or (excluded.size and (excluded.min() < 0 or excluded.max() >= n_train)):
        raise DataValidationError(
            f"sanitize.exclude_file={str(path)!r} holds positions outside the training split "
            f"[0, {n_train})"
        )
    if np.any(np.diff(excluded) <= 0):
        raise DataValidationError(
            f"sanitize.exclude_file={str(path)!r}: positions must be sorted and unique"
        )
    return excluded
