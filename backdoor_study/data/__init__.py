"""Data sources -> one canonical :class:`ClinicalDataset`, plus splits and preprocessing.

Each source registers a loader under its config name with :func:`register_source`; a loader
takes the ``data`` config node and returns :class:`LoadedData`. :func:`load_dataset` is the only
entry point the rest of the package uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backdoor_study.data.schema import ClinicalDataset, DataValidationError

__all__ = ["ClinicalDataset", "DataValidationError", "LoadedData", "load_dataset", "register_source"]


@dataclass
class LoadedData:
    """A loaded cohort. ``external_test`` marks stays reserved for the test split (external
    validation, e.g. PhysioNet set B); None means the test split is drawn internally."""

    dataset: ClinicalDataset
    external_test: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)  # files read and their sha256, for provenance


Loader = Callable[[Any], LoadedData]
_SOURCES: dict[str, Loader] = {}
# Modules that register sources on import; the lazy import keeps start-up light.
_SOURCE_MODULES = {
    "synthetic": "backdoor_study.data.synthetic",
    "physionet2012": "backdoor_study.data.physionet2012",
    "parquet": "backdoor_study.data.parquet_source",
    "iris": "backdoor_study.data.sklearn_tables",
    "breast_cancer": "backdoor_study.data.sklearn_tables",
    "wine": "backdoor_study.data.sklearn_tables",
    "digits": "backdoor_study.data.sklearn_tables",
}


def register_source(*names: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        for name in names:
            _SOURCES[name] = fn
        return fn

    return deco


def load_dataset(data_cfg: Any) -> LoadedData:
    """Load the dataset a ``data`` config node names; unknown names list the valid ones."""
    name = data_cfg.name
    if name not in _SOURCES and name in _SOURCE_MODULES:
        importlib.import_module(_SOURCE_MODULES[name])
    if name not in _SOURCES:
        raise DataValidationError(f"data.name={name!r} is not a known source; valid sources are {sorted(_SOURCE_MODULES)}")
    return _SOURCES[name](data_cfg)
