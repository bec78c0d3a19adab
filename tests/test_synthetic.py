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
from backdoor_study.data.summaries import observation_stats, per_variable_summaries
from backdoor_study.data.synthetic import (
    SyntheticLayoutError,
    calibration,
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
    hr = calibration()["variables"]["HR"]["observation_rate"]
    assert abs(ds.mask[:, :, ds.variables.index("HR")].mean() - hr) < 0.05


def test_generator_reads_only_its_calibration_file(monkeypatch):
    """The committed statistics are all it knows of set A: no real data is read at run time."""
    import backdoor_study.data.physionet2012 as physionet

    def no_real_data(*args, **kwargs):
        raise AssertionError("the generator read PhysioNet data")

    for name in ("load_set", "parse_set", "read_tar_members"):
        monkeypatch.setattr(physionet, name, no_real_data)
    assert generate_cohort(100, seed=5).digest() == generate_cohort(100, seed=5).digest()
    cal = calibration()
    assert "set A" in cal["source"] and all("-b" not in f for f in cal["files"])
    assert 0.12 <= cal["mortality"] <= 0.15


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


def _stats(ds, name):
    return observation_stats(ds.mask[:, :, ds.variables.index(name)], ds.y)


def test_observation_rates_and_never_observed_match_set_a(cohort):
    for name, target in calibration()["variables"].items():
        got = _stats(cohort, name)
        assert abs(got["observation_rate"] - target["observation_rate"]) < 0.02, name
        assert abs(got["never_observed"] - target["never_observed"]) < 0.03, name
    # the sparse ones the old generator charted nearly hourly
    assert _stats(cohort, "SaO2")["observation_rate"] < 0.1
    assert _stats(cohort, "RespRate")["never_observed"] > 0.6
    assert 0.3 < _stats(cohort, "Lactate")["never_observed"] < 0.6


def test_missingness_is_informative_like_set_a(cohort):
    """Sicker patients get more labs: where set A's death/survivor observation ratio is >= 1.15,
    the synthetic one is at least halfway there, and it is not an artefact of the label."""
    strong = {
        name: t["death_survivor_ratio"]
        for name, t in calibration()["variables"].items()
        if t["death_survivor_ratio"] >= 1.15
    }
    assert {"Lactate", "Creatinine", "Na"} <= set(strong)
    for name, target in strong.items():
        assert _stats(cohort, name)["death_survivor_ratio"] >= 1 + (target - 1) / 2, name
    assert _stats(cohort, "HR")["death_survivor_ratio"] < 1.1  # monitored hourly for everyone
    creat = cohort.mask[:, :, cohort.variables.index("Creatinine")].sum(axis=1)
    assert creat[cohort.y == 1].mean() > 1.1 * creat[cohort.y == 0].mean()


def test_value_quantiles_and_tails_match_set_a(cohort):
    cal = calibration()
    levels = cal["quantile_levels"]
    at = [levels.index(q) for q in (0.01, 0.5, 0.99)]
    for j, name in enumerate(cohort.variables):
        target = np.asarray(cal["variables"][name]["quantiles"])[at]
        got = np.quantile(cohort.x[:, :, j][cohort.mask[:, :, j]], (0.01, 0.5, 0.99))
        spread = (got[2] - got[0]) / (target[2] - target[0])
        assert 0.8 <= spread <= 1.2, (name, got, target)
        assert abs(got[1] - target[1]) <= 0.1 * (target[2] - target[0]), (name, got, target)
    lactate = cohort.x[:, :, cohort.variables.index("Lactate")]
    assert np.nanquantile(lactate, 0.99) > 10.0  # the tail the old generator lacked (4.7)


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


def test_two_processes_generating_one_layout_at_once_both_get_it(tmp_path):
    """Parallel sweep jobs on a fresh machine: one generates, the other waits and reads it
    (before, both wrote the same temp file and one crashed)."""
    import subprocess
    import sys

    code = (
        "import sys; from omegaconf import OmegaConf; "
        "from backdoor_study.config import SyntheticDataConfig; "
        "from backdoor_study.data import load_dataset; "
        "import backdoor_study.data.synthetic as syn; calls = []; gen = syn.generate_cohort; "
        "syn.generate_cohort = lambda *a, **k: (calls.append(1), gen(*a, **k))[1]; "
        "cfg = OmegaConf.structured(SyntheticDataConfig(n_stays=20000, dev_size=500, seed=5, "
        "data_dir=sys.argv[1])); print(len(calls), load_dataset(cfg).dataset.digest(), len(calls))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "data")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    lines = [out.strip().splitlines()[-1].split() for out, _ in outs]
    assert len({digest for _, digest, _ in lines}) == 1
    assert sum(int(calls) for _, _, calls in lines) == 1  # generated once, read by the other
    assert not list((tmp_path / "data").rglob("*.tmp"))


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


def test_layout_from_an_older_generator_is_refused_not_reused(tmp_path):
    load_dataset(_cfg(tmp_path))
    manifest = read_json(tmp_path / "manifest.json")
    manifest["params"]["generator_version"] = synthetic.GENERATOR_VERSION - 1
    synthetic.write_json(tmp_path / "manifest.json", manifest)
    with pytest.raises(SyntheticLayoutError, match="generator version") as err:
        load_dataset(_cfg(tmp_path))
    assert f"Delete {tmp_path} to regenerate" in str(err.value)
    del manifest["params"]["generator_version"]  # a manifest from before versions were recorded
    synthetic.write_json(tmp_path / "manifest.json", manifest)
    with pytest.raises(SyntheticLayoutError, match="generator version None"):
        load_dataset(_cfg(tmp_path))


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


# ---------------------------------------------------------------------------- calibration
def _realism_benchmark():
    spec = importlib.util.spec_from_file_location(
        "synthetic_realism", REPO_ROOT / "benchmarks" / "synthetic_realism.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_realism_checks_pass_on_the_cohort_and_miss_on_a_dense_chart(cohort):
    bench = _realism_benchmark()
    checks = bench.realism_checks(bench.realism_table(cohort, calibration()))
    assert all(ok for _, ok, _ in checks.values()), checks
    # the old generator's failure mode: everything charted every hour, no informative missingness
    dense = cohort.subset(np.arange(cohort.n_stays))
    dense.mask[:] = True
    dense.x[:] = np.where(np.isnan(dense.x), np.nanmedian(dense.x, axis=(0, 1)), dense.x)
    checks = bench.realism_checks(bench.realism_table(dense, calibration()))
    missed = [k for k, (_, ok, _) in checks.items() if not ok]
    assert any("obs-rate" in k for k in missed) and any("halfway" in k for k in missed), missed


@pytest.mark.physionet
def test_calibration_file_is_what_the_script_derives_from_set_a(physionet_root, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "calibrate_synthetic", REPO_ROOT / "scripts" / "calibrate_synthetic.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "calibration.json"
    script.main(["--root", str(physionet_root), "--cache-dir", "", "--out", str(out)])
    assert read_json(out) == read_json(synthetic.CALIBRATION_FILE)
