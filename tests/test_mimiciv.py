"""MIMIC-IV conversion on fake MIMIC-IV-schema tables: cohort, labels, hourly grid, loading."""

from __future__ import annotations

import json
import runpy

import duckdb
import numpy as np
import pytest
from omegaconf import OmegaConf

from backdoor_study.data import load_dataset
from backdoor_study.data.mimiciv import (
    DEFAULT_SQL,
    attach_tables,
    build_cohort,
    observations_to_dataset,
    run_cohort_sql,
)
from backdoor_study.data.schema import DataValidationError
from tests.conftest import REPO_ROOT
from tests.mimic_tables import KNOWN_STAY, STAY0, SUBJECT0, write_mimic_tables


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_mimic_tables(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def build(fake, tmp_path_factory):
    return build_cohort(fake.root, tmp_path_factory.mktemp("out") / "mimiciv.parquet")


def _row(ds, stay_id):
    return int(np.flatnonzero(ds.stay_id == stay_id)[0])


def test_cohort_keeps_adult_first_stays_of_48h(fake, build):
    ds = build.dataset
    assert sorted(ds.stay_id.tolist()) == sorted(fake.included)
    assert not set(ds.stay_id.tolist()) & set(fake.excluded)
    assert ds.stay_id.tolist() == sorted(ds.stay_id.tolist())
    assert [f["n_stays"] for f in build.cohort_flow] == [40, 38, 36, 34, 34]


def test_labels_ids_and_statics(fake, build):
    ds = build.dataset
    assert ds.static_num_names == ["Age"]
    assert ds.static_cat_names == ["Gender", "AdmissionType", "ICUUnit"]
    for stay_id, want in fake.included.items():
        i = _row(ds, stay_id)
        assert ds.y[i] == want["label"], stay_id
        assert ds.patient_id[i] == want["subject_id"]
        assert ds.static_num[i, 0] == want["age"]
        got = [ds.static_cat_levels[c][ds.static_cat[i, c]] for c in range(3)]
        assert got == [want["gender"], want["admission_type"], want["first_careunit"]]
    # one patient, two admissions: two stays sharing a patient_id, labelled per admission
    i, j = _row(ds, STAY0 + 6), _row(ds, STAY0 + 7)
    assert ds.patient_id[i] == ds.patient_id[j] == SUBJECT0 + 5
    assert (ds.y[i], ds.y[j]) == (0, 1)
    assert ds.n_classes == 2 and ds.class_names == ["survived", "died"]


def test_known_values_land_in_their_hour(fake, build):
    ds = build.dataset
    assert ds.x.shape == (34, 48, len(ds.variables))
    for (stay_id, var, hour), (mean, _) in fake.known.items():
        i, j = _row(ds, stay_id), ds.variables.index(var)
        assert ds.mask[i, hour, j], (var, hour)
        assert ds.x[i, hour, j] == pytest.approx(mean, abs=1e-5), (var, hour)
    for stay_id, var, hour in fake.unobserved:
        i, j = _row(ds, stay_id), ds.variables.index(var)
        assert not ds.mask[i, hour, j] and np.isnan(ds.x[i, hour, j]), (var, hour)
    np.testing.assert_array_equal(ds.mask, ~np.isnan(ds.x))


def test_fahrenheit_becomes_celsius(build):
    ds = build.dataset
    i, j = _row(ds, KNOWN_STAY), ds.variables.index("Temp")
    assert ds.units[j] == "degC"
    assert ds.x[i, 2, j] == pytest.approx(37.0, abs=1e-4)  # charted 98.6 degF
    assert ds.x[i, 3, j] == pytest.approx((38.5 + 39.0) / 2, abs=1e-4)  # 38.5 degC, 102.2 degF


def test_window_and_range_cleaning(build):
    ds = build.dataset
    i = _row(ds, KNOWN_STAY)
    creat = ds.variables.index("Creatinine")
    # the pre-ICU creatinine is outside the window; the one without hadm_id is in it
    assert np.flatnonzero(ds.mask[i, :, creat]).tolist() == [11]
    hr = ds.variables.index("HR")
    assert np.nanmax(ds.x[:, :, hr]) < 300
    assert build.out_of_range == {"HR": 2}
    # every filler stay has HR charted each hour: the grid is full, and nothing beyond hour 47
    filler = ds.stay_id >= STAY0 + 100
    assert ds.mask[filler, :, hr].all()


def test_last_aggregate_takes_the_latest_value(fake, tmp_path):
    ds = build_cohort(fake.root, tmp_path / "last.parquet", aggregate="last").dataset
    for (stay_id, var, hour), (_, last) in fake.known.items():
        i, j = _row(ds, stay_id), ds.variables.index(var)
        assert ds.x[i, hour, j] == pytest.approx(last, abs=1e-5), (var, hour)


def test_sql_emits_long_rows_per_measurement(fake):
    con = duckdb.connect()
    attach_tables(con, fake.root)
    run_cohort_sql(con)
    rows = con.execute(
        "SELECT hour, value FROM observations WHERE stay_id = ? AND variable = 'HR' "
        "AND hour = 0 ORDER BY charttime",
        [KNOWN_STAY],
    ).fetchall()
    assert rows == [(0, 80.0), (0, 90.0)]
    lo, hi = con.execute("SELECT min(hour), max(hour) FROM observations").fetchone()
    assert (lo, hi) == (0, 47)
    cols = [r[0] for r in con.execute("DESCRIBE cohort").fetchall()]
    for c in ("stay_id", "subject_id", "hadm_id", "age", "gender", "admission_type"):
        assert c in cols
    assert "first_careunit" in cols and "label" in cols
    con.close()


def test_parquet_loads_with_data_parquet(build):
    loaded = load_dataset(OmegaConf.create({"name": "parquet", "path": str(build.path)}))
    assert loaded.dataset.digest() == build.dataset.digest()
    assert loaded.source["path"] == str(build.path.resolve())


def test_all_stays_and_24h_widen_the_cohort(fake, tmp_path):
    ds = build_cohort(
        fake.root, tmp_path / "wide.parquet", all_stays=True, min_los_hours=24
    ).dataset
    extra = {STAY0 + 3, STAY0 + 5, STAY0 + 11}  # a 30 h stay, two second stays of 50 and 60 h
    assert set(ds.stay_id.tolist()) == set(fake.included) | extra


def test_parquet_inputs_give_the_same_dataset(build, tmp_path):
    fake_pq = write_mimic_tables(tmp_path / "mimic_pq", fmt="parquet")
    ds = build_cohort(fake_pq.root, tmp_path / "from_pq.parquet").dataset
    assert ds.digest() == build.dataset.digest()


def test_unknown_variable_in_mapping_is_named(fake, tmp_path):
    sql = DEFAULT_SQL.read_text().replace("'HR',", "'HeartRate',", 1)
    bad = tmp_path / "bad.sql"
    bad.write_text(sql)
    with pytest.raises(DataValidationError, match=r"HeartRate"):
        build_cohort(fake.root, tmp_path / "bad.parquet", sql=bad)


def test_missing_table_is_named(tmp_path):
    (tmp_path / "hosp").mkdir()
    with pytest.raises(FileNotFoundError, match=r"hosp\.patients"):
        build_cohort(tmp_path, tmp_path / "x.parquet")


def test_bad_aggregate_lists_the_valid_ones(fake):
    con = duckdb.connect()
    with pytest.raises(ValueError, match=r"\['mean', 'last'\]"):
        observations_to_dataset(con, aggregate="median")
    con.close()


def test_script_writes_parquet_and_build_record(fake, build, tmp_path):
    script = runpy.run_path(str(REPO_ROOT / "scripts" / "00_to_parquet.py"), run_name="script")
    out = tmp_path / "cli.parquet"
    assert script["main"]([str(fake.root), str(out), "--threads", "1"]) == 0
    record = json.loads((tmp_path / "cli.parquet.build.json").read_text())
    assert record["digest"] == build.dataset.digest()
    assert record["n_stays"] == 34
