"""``data=physionet2012``: the real challenge files parse to the known cohort, resampled as documented.

Tests on the real files use the ``physionet_root`` fixture and skip, saying why, when the files
are absent; the tests on tiny fake archives always run. Set A is parsed once per session.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from backdoor_study.config import CONF_DIR, PhysioNet2012DataConfig, validate
from backdoor_study.data import load_dataset
from backdoor_study.data import physionet2012 as pn
from backdoor_study.data.schema import ClinicalDataset, DataValidationError

N_STEPS = 48


# ---------------------------------------------------------------------- helpers
def reference_grid(text: str, n_steps: int = N_STEPS) -> tuple[dict, np.ndarray]:
    """A plain, line-by-line reading of one record (the spec, written the slow obvious way)."""
    variables = list(pn.TIME_SERIES_VARIABLES)
    grid = np.full((n_steps, len(variables)), np.nan)
    latest: dict[tuple[int, int], int] = {}  # cell -> minutes of the value kept there
    descriptors: dict[str, float] = {}
    for line in text.strip().splitlines()[1:]:
        time, param, raw = line.split(",")
        hh, mm = time.split(":")
        minutes, value = int(hh) * 60 + int(mm), float(raw)
        if param in pn.DESCRIPTORS and minutes == 0 and param not in descriptors:
            descriptors[param] = value
            continue
        if param not in variables or value == -1:
            continue
        cell = (min(minutes // 60, n_steps - 1), variables.index(param))
        if param == "Urine":
            grid[cell] = np.nan_to_num(grid[cell]) + value
        elif minutes >= latest.get(cell, -1):
            grid[cell], latest[cell] = value, minutes
    return descriptors, grid


def write_fake_set(
    root: Path, records: dict[int, str], labels: dict[int, int], set_name: str = "a"
) -> None:
    """A tiny archive + outcomes file in the challenge's layout."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / f"set-{set_name}.tar.gz", "w:gz") as tf:
        for rid, body in records.items():
            data = ("Time,Parameter,Value\n" + body).encode()
            info = tarfile.TarInfo(f"set-{set_name}/{rid}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    lines = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    lines += [f"{rid},10,2,5,-1,{y}" for rid, y in labels.items()]
    (root / f"Outcomes-{set_name}.txt").write_text("\n".join(lines) + "\n")


def descriptor_rows(rid: int, gender: int = 1, icu: int = 3, weight: float = 80.0) -> str:
    return (
        f"00:00,RecordID,{rid}\n00:00,Age,60\n00:00,Gender,{gender}\n00:00,Height,-1\n"
        f"00:00,ICUType,{icu}\n00:00,Weight,{weight}\n"
    )


def data_config(root: Path, cache_dir: Path | None, **overrides) -> object:
    cfg = PhysioNet2012DataConfig(
        root=str(root), cache_dir=str(cache_dir) if cache_dir else "", **overrides
    )
    return OmegaConf.structured(cfg)


# ---------------------------------------------------------------------- fake archives (always run)
def test_resampling_rules_on_a_fake_record(tmp_path):
    body = descriptor_rows(1001, weight=-1) + (
        "00:10,HR,80\n00:50,HR,90\n"  # last value in the hour wins
        "00:20,Urine,100\n00:40,Urine,50\n"  # Urine is summed
        "01:05,HR,-1\n"  # -1 is missing for a time series too
        "01:30,Weight,82.5\n"  # later Weight rows are the time series
        "47:30,Temp,37.0\n48:00,Temp,38.5\n"  # at or beyond n_steps hours: clamp into the last step
    )
    write_fake_set(tmp_path, {1001: body}, {1001: 1})
    ds = pn.parse_set(tmp_path / "set-a.tar.gz", tmp_path / "Outcomes-a.txt", n_steps=N_STEPS)
    v = ds.variables.index
    assert ds.x[0, 0, v("HR")] == 90 and ds.x[0, 0, v("Urine")] == 150
    assert not ds.mask[0, 1, v("HR")] and np.isnan(ds.x[0, 1, v("HR")])
    assert (
        ds.x[0, 1, v("Weight")] == 82.5 and not ds.mask[0, 0, v("Weight")]
    )  # admission Weight is static
    assert ds.x[0, N_STEPS - 1, v("Temp")] == 38.5
    assert ds.mask.sum() == 4
    assert np.isnan(ds.static_num[0, ds.static_num_names.index("AdmissionWeight")])
    assert ds.y.tolist() == [1] and ds.stay_id.tolist() == [1001] == ds.patient_id.tolist()


def test_unknown_parameter_is_named(tmp_path):
    write_fake_set(tmp_path, {7: descriptor_rows(7) + "00:30,HeartRateX,80\n"}, {7: 0})
    with pytest.raises(
        DataValidationError,
        match=r"unknown Parameter name\(s\) \['HeartRateX'\].*record\(s\) \[7\]",
    ):
        pn.parse_set(tmp_path / "set-a.tar.gz", tmp_path / "Outcomes-a.txt")


def test_records_without_outcomes_are_refused(tmp_path):
    write_fake_set(tmp_path, {7: descriptor_rows(7), 8: descriptor_rows(8)}, {7: 0, 9: 1})
    with pytest.raises(
        DataValidationError, match=r"1 record\(s\) without an outcome \(e\.g\. \[8\]\)"
    ):
        pn.parse_set(tmp_path / "set-a.tar.gz", tmp_path / "Outcomes-a.txt")


def test_invalid_icu_type_is_named(tmp_path):
    write_fake_set(tmp_path, {7: descriptor_rows(7, icu=9)}, {7: 0})
    with pytest.raises(DataValidationError, match="record 7 has ICUType=9"):
        pn.parse_set(tmp_path / "set-a.tar.gz", tmp_path / "Outcomes-a.txt")


def test_missing_directory_says_where_and_how(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(data_config(missing, None))
    message = str(err.value)
    for part in (str(missing), "data.root", pn.ROOT_ENV, "physionet.org/content/challenge-2012"):
        assert part in message


def test_missing_file_is_named(tmp_path):
    write_fake_set(tmp_path, {7: descriptor_rows(7)}, {7: 0})
    with pytest.raises(FileNotFoundError, match=r"\['set-b.tar.gz', 'Outcomes-b.txt'\] not found"):
        load_dataset(data_config(tmp_path, None, test_sets=["b"]))


# ---------------------------------------------------------------------- real set A
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("physionet_cache")


@pytest.fixture(scope="session")
def set_a_texts(physionet_root) -> dict[str, str]:
    return {
        name: data.decode() for name, data in pn.read_tar_members(physionet_root / "set-a.tar.gz")
    }


@pytest.fixture(scope="session")
def set_a(physionet_root, cache_dir) -> ClinicalDataset:
    ds, _ = pn.load_set(physionet_root, "a", n_steps=N_STEPS, cache_dir=cache_dir)
    return ds


@pytest.mark.physionet
def test_set_a_cohort(set_a):
    assert set_a.n_stays == 4000
    assert int(set_a.y.sum()) == 554
    assert set_a.x.shape == (4000, N_STEPS, 37)
    assert set_a.variables == list(pn.TIME_SERIES_VARIABLES)
    assert set_a.static_num_names == ["Age", "Height", "AdmissionWeight"]
    assert set_a.static_cat_levels == [["female", "male"], ["CCU", "CSRU", "MICU", "SICU"]]
    assert np.all(np.diff(set_a.stay_id) > 0)
    np.testing.assert_array_equal(set_a.stay_id, set_a.patient_id)


@pytest.mark.physionet
def test_mask_matches_values(set_a):
    assert np.array_equal(set_a.mask, ~np.isnan(set_a.x))
    assert (set_a.x[set_a.mask] != -1).all()  # -1 never survives as a value
    assert set_a.mask[:, :, set_a.variables.index("HR")].any(axis=1).mean() > 0.95


@pytest.mark.physionet
@pytest.mark.parametrize("record_id", [132539, 135757, 138981, 135472])
def test_records_match_a_line_by_line_reading(set_a, set_a_texts, record_id):
    descriptors, grid = reference_grid(set_a_texts[f"set-a/{record_id}.txt"])
    i = int(np.searchsorted(set_a.stay_id, record_id))
    np.testing.assert_array_equal(set_a.x[i], grid.astype(np.float32))
    raw = [descriptors[pn.STATIC_NUMERIC[name]] for name in set_a.static_num_names]
    expected = np.where(np.array(raw) == -1, np.nan, raw).astype(np.float32)
    np.testing.assert_array_equal(set_a.static_num[i], expected)


@pytest.mark.physionet
def test_known_values_of_record_132539(set_a):
    # 00:00 Age 54, Gender 0, Height -1, ICUType 4, Weight -1; 00:07 HR 73, 00:37 HR 77, 01:37 HR 60;
    # Urine 900 at 00:07 and 60 at 00:37; survived.
    i = int(np.searchsorted(set_a.stay_id, 132539))
    v = set_a.variables.index
    assert set_a.x[i, 0, v("HR")] == 77 and set_a.x[i, 1, v("HR")] == 60
    assert set_a.x[i, 0, v("Urine")] == 960
    age, height, weight = set_a.static_num[i]
    assert age == 54 and np.isnan(height) and np.isnan(weight)
    assert set_a.static_cat[i].tolist() == [0, 3]  # female, SICU
    assert set_a.y[i] == 0


@pytest.mark.physionet
def test_known_values_of_record_135757(set_a):
    # Gender -1 (unknown), Height 180.3, ICUType 3, Weight 123; HR 130,122,123,124 in hour 0; died.
    i = int(np.searchsorted(set_a.stay_id, 135757))
    assert set_a.static_cat[i].tolist() == [-1, 2]  # unknown gender, MICU
    np.testing.assert_allclose(set_a.static_num[i], [43, 180.3, 123], rtol=1e-6)
    assert set_a.x[i, 0, set_a.variables.index("HR")] == 124
    assert set_a.x[i, 1, set_a.variables.index("Urine")] == 400
    assert set_a.y[i] == 1


@pytest.mark.physionet
def test_times_at_48h_clamp_into_the_last_step(set_a):
    # Record 138981: RespRate 11 at 46:00 and 13 at 48:00 (nothing in hour 47).
    i = int(np.searchsorted(set_a.stay_id, 138981))
    resp = set_a.x[i, :, set_a.variables.index("RespRate")]
    assert resp[46] == 11 and resp[47] == 13


@pytest.mark.physionet
def test_cache_is_written_reused_and_keyed_by_digest(
    set_a, physionet_root, cache_dir, tmp_path, monkeypatch
):
    key = pn.cache_key(_file_hashes(physionet_root), N_STEPS)
    expected = cache_dir / f"physionet2012_set-a_{key}.parquet"
    assert expected.exists() and len(key) == 16

    def no_parsing(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(pn, "parse_set", no_parsing)
    again, info = pn.load_set(physionet_root, "a", n_steps=N_STEPS, cache_dir=cache_dir)
    assert info["cache"] == str(expected) and again.digest() == set_a.digest()
    assert info["files"]["set-a.tar.gz"]["sha256"].startswith("2048357345b41fd7")
    monkeypatch.undo()

    # The same archive with one outcome changed: a new cache file, and the new label is read.
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "set-a.tar.gz").symlink_to(physionet_root / "set-a.tar.gz")
    text = (physionet_root / "Outcomes-a.txt").read_text()
    (changed / "Outcomes-a.txt").write_text(
        text.replace("\n132539,6,1,5,-1,0\n", "\n132539,6,1,5,-1,1\n")
    )
    flipped, info2 = pn.load_set(changed, "a", n_steps=N_STEPS, cache_dir=cache_dir)
    assert info2["cache"] != info["cache"] and Path(info2["cache"]).exists()
    assert int(flipped.y.sum()) == 555


@pytest.mark.physionet
def test_damaged_cache_is_rebuilt(set_a, physionet_root, tmp_path):
    damaged = pn.cache_path(tmp_path, "a", pn.cache_key(_file_hashes(physionet_root), N_STEPS))
    damaged.write_bytes(b"not parquet")
    ds, info = pn.load_set(physionet_root, "a", n_steps=N_STEPS, cache_dir=tmp_path)
    assert info["cache"] == str(damaged) and ds.digest() == set_a.digest()
    assert damaged.read_bytes()[:4] == b"PAR1"


def _file_hashes(root: Path, set_name: str = "a") -> dict[str, str]:
    return {p.name: pn.sha256_file(p) for p in pn.set_files(root, set_name)}


@pytest.mark.physionet
def test_hydra_config_loads_set_a_with_an_internal_split(set_a, physionet_root, cache_dir):
    overrides = ["data=physionet2012", f"data.root={physionet_root}", f"data.cache_dir={cache_dir}"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    loaded = load_dataset(cfg.data)
    assert loaded.external_test is None
    assert loaded.dataset.digest() == set_a.digest()
    assert set(loaded.source["files"]) == {"set-a.tar.gz", "Outcomes-a.txt"}


@pytest.mark.physionet
def test_external_test_flag_marks_set_b(set_a, physionet_root, cache_dir):
    if (
        not (physionet_root / "set-b.tar.gz").exists()
        or not (physionet_root / "Outcomes-b.txt").exists()
    ):
        pytest.skip(f"set-b.tar.gz / Outcomes-b.txt not found in {physionet_root}")
    loaded = load_dataset(data_config(physionet_root, cache_dir, train_sets=["a"], test_sets=["b"]))
    ds, flag = loaded.dataset, loaded.external_test
    assert ds.n_stays == 8000 and flag is not None and flag.dtype == np.bool_
    assert flag.sum() == 4000 and not flag[:4000].any()
    assert int(ds.y[~flag].sum()) == 554 and int(ds.y[flag].sum()) == 568
    assert set(ds.stay_id[~flag]) == set(set_a.stay_id)
    assert loaded.source["files"]["set-b.tar.gz"]["sha256"].startswith("fee9cc5aac6449c6")


@pytest.mark.physionet
def test_grid_length_is_part_of_the_cache_key(set_a, physionet_root, cache_dir):
    short, info = pn.load_set(physionet_root, "a", n_steps=24, cache_dir=cache_dir)
    assert short.x.shape == (4000, 24, 37)
    assert len(list(cache_dir.glob("physionet2012_set-a_*.parquet"))) >= 2
    # Hours 0..22 agree with the 48-step grid; hour 23 also holds everything from 23 h on.
    np.testing.assert_array_equal(short.x[:, :23], set_a.x[:, :23])
