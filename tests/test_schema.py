"""The canonical dataset: validation errors name the problem; Parquet round-trips exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backdoor_study.data.schema import DataValidationError, read_parquet, to_table, write_parquet
from tests.conftest import make_tiny_dataset


def test_parquet_round_trip_is_exact(tmp_path):
    ds = make_tiny_dataset()
    path = write_parquet(ds, tmp_path / "main.parquet")
    back = read_parquet(path)
    assert back.digest() == ds.digest()
    np.testing.assert_array_equal(back.mask, ds.mask)


def test_digest_changes_with_any_value():
    ds = make_tiny_dataset()
    other = make_tiny_dataset()
    other.x[5, 3, 1] = other.x[5, 3, 1] + 1 if other.mask[5, 3, 1] else 1.0
    other.mask[5, 3, 1] = True
    assert other.digest() != ds.digest()


def _write(table: pa.Table, path):
    pq.write_table(table, path)
    return path


def test_missing_column_is_named(tmp_path):
    table = to_table(make_tiny_dataset()).drop_columns(["Lactate"])
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['Lactate'\]"):
        read_parquet(_write(table, tmp_path / "bad.parquet"))


def test_wrong_dtype_is_named(tmp_path):
    table = to_table(make_tiny_dataset())
    i = table.column_names.index("label")
    table = table.set_column(
        i, "label", pa.array([str(v) for v in table.column("label").to_pylist()])
    )
    with pytest.raises(DataValidationError, match="'label' must be integer"):
        read_parquet(_write(table, tmp_path / "bad.parquet"))


def test_null_labels_are_refused(tmp_path):
    table = to_table(make_tiny_dataset())
    labels = table.column("label").to_pylist()
    labels[3] = None
    i = table.column_names.index("label")
    table = table.set_column(i, "label", pa.array(labels, type=pa.int64()))
    with pytest.raises(DataValidationError, match="null/NaN label"):
        read_parquet(_write(table, tmp_path / "bad.parquet"))


def test_unknown_variable_is_named():
    ds = make_tiny_dataset()
    with pytest.raises(
        DataValidationError, match=r"unknown variable\(s\) \['HeartRate'\].*valid variables"
    ):
        ds.variable_index(["HR", "HeartRate"], key="trigger.variables")


def test_mask_and_values_must_agree():
    ds = make_tiny_dataset()
    ds.mask[0, 0, 1] = True
    ds.x[0, 0, 1] = np.nan
    with pytest.raises(DataValidationError, match="NaN in a cell the mask marks as observed"):
        ds.validate()


def test_a_name_used_for_a_variable_and_a_static_is_refused():
    ds = make_tiny_dataset()
    ds.static_num_names = ["HR", "Weight"]
    with pytest.raises(DataValidationError, match=r"column name\(s\) \['HR'\] used twice"):
        ds.validate()
