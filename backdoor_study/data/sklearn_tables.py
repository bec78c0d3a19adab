"""``data=iris|breast_cancer|wine|digits``: scikit-learn's bundled tables as static-only datasets.

These serve the classic (non-clinical) poisoning study. The tables ship inside scikit-learn, so
loading never touches the network. Each becomes a :class:`ClinicalDataset` with no time grid
(``x`` of shape ``(N, 0, 0)``), every feature a numeric static under its sklearn feature name, no
categoricals, ``class_names`` from the table's ``target_names`` and ``stay_id == patient_id ==``
row index (one "stay" per row, so splits treat every row as its own patient).

This module owns only the mapping from a bundled table to the canonical form; the content digest
is recorded by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import sklearn
from sklearn import datasets as sk_datasets
from sklearn.utils import Bunch

from backdoor_study.config import SKLEARN_TABLES
from backdoor_study.data import LoadedData, register_source
from backdoor_study.data.schema import ClinicalDataset, DataValidationError

_LOADERS: dict[str, Callable[[], Bunch]] = {
    "iris": sk_datasets.load_iris,
    "breast_cancer": sk_datasets.load_breast_cancer,
    "wine": sk_datasets.load_wine,
    "digits": sk_datasets.load_digits,
}
assert set(_LOADERS) == set(SKLEARN_TABLES), "one loader per table named in config.SKLEARN_TABLES"


def load_table(name: str) -> ClinicalDataset:
    """The bundled table ``name`` (one of ``SKLEARN_TABLES``) as a static-only dataset.

    Shapes: ``x`` and ``mask`` (N, 0, 0); ``static_num`` (N, n_features) float32;
    ``static_cat`` (N, 0) int64; ``y`` (N,) int64 in ``[0, len(target_names))``.
    """
    if name not in _LOADERS:
        raise DataValidationError(
            f"data.name={name!r} is not a bundled sklearn table; "
            f"valid tables are {list(SKLEARN_TABLES)}"
        )
    bunch = _LOADERS[name]()
    features = np.asarray(bunch.data, dtype=np.float32)
    n = features.shape[0]
    row_index = np.arange(n, dtype=np.int64)
    return ClinicalDataset(
        name=name,
        x=np.zeros((n, 0, 0), dtype=np.float32),
        mask=np.zeros((n, 0, 0), dtype=bool),
        static_num=np.ascontiguousarray(features),
        static_cat=np.zeros((n, 0), dtype=np.int64),
        y=np.asarray(bunch.target, dtype=np.int64),
        stay_id=row_index,
        patient_id=row_index.copy(),
        variables=[],
        units=[],
        static_num_names=[str(f) for f in bunch.feature_names],
        static_cat_names=[],
        static_cat_levels=[],
        class_names=[str(c) for c in bunch.target_names],
    )


@register_source(*SKLEARN_TABLES)
def load(data_cfg: Any) -> LoadedData:
    """Loader for the ``data`` config node of any sklearn table."""
    return LoadedData(
        dataset=load_table(str(data_cfg.name)),
        source={"sklearn_table": str(data_cfg.name), "sklearn_version": sklearn.__version__},
    )
