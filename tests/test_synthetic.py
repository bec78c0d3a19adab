"""data=synthetic: deterministic, realistic, learnable, and its seed layout is never silently replaced."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import backdoor_study.data.synthetic as synthetic
from backdoor_study.config import SyntheticDataConfig
from backdoor_study.data import load_dataset
from backdoor_study.data.schema import read_parquet
from backdoor_study.data.summaries import per_variable_summaries
from backdoor_study.data.synthetic import (
    LABS,
    VITALS,
    SyntheticLayoutError,
    dev_indices,
    generate_cohort,
    rebuild_dev_subset,
    sample_dev,
)
from backdoor_study.data.variables import VARIABLES
from backdoor_study.utils import read_json
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(4000, seed=7)


def _cfg(data_dir, **overrides):
    fields = {"n_stays": 600, "dev_size": 200, "seed": 11, "data_dir": str(data_dir), **overrides}
    return OmegaConf.structured(SyntheticDataConfig(**fields))


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_digest_other_seed_differs():
    a = generate_cohort(300, seed=5)
    assert generate_cohort(300, seed=5).digest() == a.digest()
    assert generate_cohort(300, seed=6).digest() != a.digest()


def test_n_steps_is_respected():
    ds = generate_cohort(200, n_steps=6, seed=1)
    assert ds.x.shape == (200, 6, len(synthetic.VARIABLES))
    assert ds.mask[:, :, : len(VITALS)].mean() > 0.8


# ---------------------------------------------------------------------------- realism
def test_schema_vocabulary_and_statics(cohort):
    assert cohort.name == "synthetic"
    assert len(cohort.variables) >= 15
    assert {"HR", "SysABP", "Lactate", "Creatinine"} <= set(cohort.variables)
    assert cohort.units == [VARIABLES[v].unit for v in cohort.variables]
    assert cohort.static_num_names == ["Age", "Weight", "Height"]
    levels = dict(zip(cohort.static_cat_names, cohort.static_cat_levels))
    assert levels["AdmissionType"] == ["EMERGENCY", "URGENT", "ELECTIVE"]
    assert set(levels["ICUUnit"]) == {"MICU", "SICU", "CCU", "CSRU", "TSICU"}
    unknown = (cohort.static_cat == -1).mean(axis=0)
    assert unknown.max() < 0.05 and unknown.sum() > 0  # a few unknowns, not many
    age = cohort.static_num[:, 0]
    assert 18 <= age.min() and age.max() <= 91
    # some patients have more than one stay, so splitting by patient matters
    _, per_patient = np.unique(cohort.patient_id, return_counts=True)
    assert 0.1 < (per_patient > 1).mean() < 0.5


def test_prevalence_is_near_the_config(cohort):
    assert abs(cohort.y.mean() - 0.12) < 0.02
    assert abs(generate_cohort(3000, prevalence=0.3, seed=3).y.mean() - 0.3) < 0.03


def test_a_patient_dies_at_most_once(cohort):
    deaths = np.bincount(np.unique(cohort.patient_id, return_inverse=True)[1], weights=cohort.y)
    assert deaths.max() <= 1


def test_values_inside_plausible_ranges_and_mask_consistent(cohort):
    np.testing.assert_array_equal(np.isnan(cohort.x), ~cohort.mask)
    for j, name in enumerate(cohort.variables):
        observed = cohort.x[:, :, j][cohort.mask[:, :, j]]
        spec = VARIABLES[name]
        assert spec.low <= observed.min() and observed.max() <= spec.high, name
    sys_, dia, map_ = (
        cohort.x[:, :, cohort.variables.index(v)] for v in ("SysABP", "DiasABP", "MAP")
    )
    seen = cohort.mask[:, :, cohort.variables.index("SysABP")]
    assert (dia[seen] < sys_[seen]).all()
    assert ((dia[seen] <= map_[seen]) & (map_[seen] <= sys_[seen])).all()


def test_sampling_rates_vitals_hourly_labs_sparse(cohort):
    rate = cohort.mask.mean(axis=(0, 1))
    for name in VITALS:
        assert 0.8 <= rate[cohort.variables.index(name)] < 1.0, name  # near hourly, some gaps
    for name in LABS:
        assert 0.0 < rate[cohort.variables.index(name)] <= 0.25, name  # every 6-24 h
    # sicker stays get more labs: lab frequency is informative, as in real ICU data
    creat = cohort.mask[:, :, cohort.variables.index("Creatinine")].sum(axis=1)
    assert creat[cohort.y == 1].mean() > creat[cohort.y == 0].mean()


# ---------------------------------------------------------------------------- learnability
def _summary_features(ds):
    summaries, _ = per_variable_summaries(ds.x, ds.mask)
    onehot = [
        np.eye(len(lv) + 1)[ds.static_cat[:, j] + 1] for j, lv in enumerate(ds.static_cat_levels)
    ]
    feats = np.concatenate([summaries, ds.static_num, *onehot], axis=1)
    missing = np.isnan(feats)
    feats = np.where(missing, np.nanmean(feats, axis=0), feats)
    feats = np.nan_to_num(feats)
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-6)
    return np.concatenate([feats, missing[:, missing.any(axis=0)]], axis=1)


def test_logistic_regression_on_summaries_learns_but_not_trivially():
    ds = generate_cohort(5000, seed=21)
    features = _summary_features(ds)
    train = (ds.patient_id % 10) < 7  # by patient
    model = LogisticRegression(C=0.1, max_iter=2000).fit(features[train], ds.y[train])
    auroc = roc_auc_score(ds.y[~train], model.decision_function(features[~train]))
    assert 0.70 <= auroc <= 0.88, auroc


# ---------------------------------------------------------------------------- dev subset
def test_dev_subset_is_deterministic_stratified_and_whole_patients(cohort):
    idx = dev_indices(cohort, 1000, seed=3)
    np.testing.assert_array_equal(idx, dev_indices(cohort, 1000, seed=3))
    assert not np.array_equal(idx, dev_indices(cohort, 1000, seed=4))
    assert idx.size == 1000 and np.all(np.diff(idx) > 0)
    assert cohort.y[idx].sum() == round(1000 * cohort.y.mean())
    inside = np.isin(cohort.patient_id, cohort.patient_id[idx])
    np.testing.assert_array_equal(np.flatnonzero(inside), idx)  # no patient is split
    assert sample_dev(cohort, 1000, seed=3).digest() == cohort.subset(idx).digest()


def test_dev_size_out_of_range_is_refused(cohort):
    with pytest.raises(ValueError, match="data.dev_size=5000"):
        dev_indices(cohort, 5000, seed=0)


# ---------------------------------------------------------------------------- seed layout
def test_loader_writes_the_seed_layout(tmp_path):
    loaded = load_dataset(_cfg(tmp_path))
    for rel in ("main.parquet", "dev/dev.parquet", "splits/splits.json", "manifest.json"):
        assert (tmp_path / rel).is_file(), rel
    manifest = read_json(tmp_path / "manifest.json")
    assert manifest["params"] == {
        "n_stays": 600,
        "n_steps": 48,
        "prevalence": 0.12,
        "seed": 11,
        "dev_size": 200,
        "generator_version": synthetic.GENERATOR_VERSION,
    }
    main = read_parquet(tmp_path / "main.parquet")
    assert main.digest() == manifest["digests"]["main"] == generate_cohort(600, seed=11).digest()
    ds = loaded.dataset
    assert ds.name == "synthetic" and ds.n_stays == 200
    assert ds.digest() == manifest["digests"]["dev"] == loaded.source["digests"]["dev"]
    assert loaded.source["subset"] == "dev" and loaded.source["n_stays"] == 600
    splits = read_json(tmp_path / "splits/splits.json")
    assert splits["dataset_digest"] == ds.digest()
    all_ids = sorted(sum(splits["stay_ids"].values(), []))
    assert all_ids == sorted(ds.stay_id.tolist())

    full = load_dataset(_cfg(tmp_path, subset="full")).dataset
    assert full.n_stays == 600 and full.digest() == main.digest()


def test_second_load_reads_and_does_not_regenerate(tmp_path, monkeypatch):
    first = load_dataset(_cfg(tmp_path)).dataset
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise AssertionError("the cohort was regenerated")

    monkeypatch.setattr(synthetic, "generate_cohort", boom)
    monkeypatch.setattr(synthetic, "sample_dev", boom)
    again = load_dataset(_cfg(tmp_path)).dataset
    assert again.digest() == first.digest()
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}


def test_different_parameters_are_refused_naming_them(tmp_path):
    load_dataset(_cfg(tmp_path))
    with pytest.raises(SyntheticLayoutError, match=r"n_stays=600 on disk vs 700 requested") as err:
        load_dataset(_cfg(tmp_path, n_stays=700, seed=12))
    assert "seed=11 on disk vs 12 requested" in str(err.value)
    assert "data.data_dir" in str(err.value)
    assert read_json(tmp_path / "manifest.json")["params"]["n_stays"] == 600  # untouched


def test_missing_file_is_rebuilt_and_modified_file_is_refused(tmp_path):
    first = load_dataset(_cfg(tmp_path)).dataset
    (tmp_path / "dev" / "dev.parquet").unlink()
    assert load_dataset(_cfg(tmp_path)).dataset.digest() == first.digest()

    other = generate_cohort(600, seed=99)  # a foreign file in place of main.parquet
    synthetic.write_parquet(other, tmp_path / "main.parquet")
    with pytest.raises(SyntheticLayoutError, match="has been modified"):
        load_dataset(_cfg(tmp_path, subset="full"))


def test_files_without_manifest_from_other_parameters_are_refused(tmp_path):
    synthetic.write_parquet(generate_cohort(600, seed=99), tmp_path / "main.parquet")
    with pytest.raises(SyntheticLayoutError, match="does not hold the requested"):
        load_dataset(_cfg(tmp_path))


def test_sample_dev_script_rebuilds_the_dev_subset(tmp_path):
    load_dataset(_cfg(tmp_path))
    spec = importlib.util.spec_from_file_location(
        "sample_dev", REPO_ROOT / "scripts" / "02_sample_dev.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--data-dir", str(tmp_path), "--dev-size", "300"])
    manifest = read_json(tmp_path / "manifest.json")
    assert manifest["params"]["dev_size"] == 300 and manifest["counts"]["dev"]["stays"] == 300
    assert load_dataset(_cfg(tmp_path, dev_size=300)).dataset.n_stays == 300
    with pytest.raises(SyntheticLayoutError, match="dev_size=300 on disk vs 200 requested"):
        load_dataset(_cfg(tmp_path))
    # rebuilding with the recorded size is a no-op on the content
    before = manifest["digests"]
    assert rebuild_dev_subset(tmp_path)["digests"] == before
