"""The bundled sklearn tables load offline as valid static-only datasets, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from backdoor_study.config import SKLEARN_TABLES
from backdoor_study.data import load_dataset
from backdoor_study.data.schema import DataValidationError, read_parquet, write_parquet
from backdoor_study.data.sklearn_tables import load_table

# name -> (rows, features, rows per class)
EXPECTED = {
    "iris": (150, 4, [50, 50, 50]),
    "breast_cancer": (569, 30, [212, 357]),
    "wine": (178, 13, [59, 71, 48]),
    "digits": (1797, 64, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),
}


def _load(name: str):
    return load_dataset(OmegaConf.create({"name": name})).dataset


@pytest.mark.parametrize("name", SKLEARN_TABLES)
def test_table_is_static_only_with_expected_shapes(name):
    ds = _load(name)
    n, f, per_class = EXPECTED[name]
    assert ds.x.shape == (n, 0, 0) and ds.x.dtype == np.float32
    assert ds.mask.shape == (n, 0, 0) and ds.mask.dtype == np.bool_
    assert not ds.is_time_series
    assert ds.variables == [] and ds.units == []
    assert ds.static_num.shape == (n, f) and ds.static_num.dtype == np.float32
    assert len(ds.static_num_names) == f
    assert ds.static_cat.shape == (n, 0) and ds.static_cat_names == []
    assert np.bincount(ds.y).tolist() == per_class
    assert ds.n_classes == len(per_class)
    assert all(isinstance(c, str) for c in ds.class_names)
    np.testing.assert_array_equal(ds.stay_id, np.arange(n))
    np.testing.assert_array_equal(ds.patient_id, np.arange(n))
    ds.validate()


def test_iris_names_come_from_sklearn():
    ds = _load("iris")
    assert ds.class_names == ["setosa", "versicolor", "virginica"]
    assert ds.static_num_names == [
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    ]
    np.testing.assert_allclose(ds.static_num[0], [5.1, 3.5, 1.4, 0.2], rtol=1e-6)


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_digest_is_deterministic(name):
    assert load_table(name).digest() == load_table(name).digest()
    assert load_table(name).digest() != load_table("breast_cancer").digest()


def test_loaded_data_records_the_table():
    loaded = load_dataset(OmegaConf.create({"name": "wine"}))
    assert loaded.external_test is None
    assert loaded.source["sklearn_table"] == "wine"


def test_static_only_table_round_trips_through_parquet(tmp_path):
    ds = load_table("breast_cancer")
    back = read_parquet(write_parquet(ds, tmp_path / "bc.parquet"))
    assert back.digest() == ds.digest()


def test_unknown_table_lists_valid_ones():
    with pytest.raises(DataValidationError, match="valid tables are"):
        load_table("titanic")
