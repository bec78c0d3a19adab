"""Splits: deterministic for a seed, stratified, and never one patient in two splits."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from backdoor_study.data.schema import DataValidationError
from backdoor_study.data.splits import Splits, make_splits
from tests.conftest import make_tiny_dataset

SPLIT = OmegaConf.create({"train": 0.6, "val": 0.2, "test": 0.2, "seed": 7})


def test_splits_are_deterministic_and_partition_the_stays():
    ds = make_tiny_dataset(n=400)
    a, b = make_splits(ds, SPLIT), make_splits(ds, SPLIT)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name], b[name])
    allidx = np.concatenate([a.train, a.val, a.test])
    assert sorted(allidx.tolist()) == list(range(ds.n_stays))
    other = make_splits(ds, OmegaConf.merge(SPLIT, {"seed": 8}))
    assert not np.array_equal(a.test, other.test)


def test_no_patient_in_two_splits_and_stratified():
    ds = make_tiny_dataset(n=600)
    ds.patient_id[:] = np.arange(ds.n_stays) // 3  # three stays per patient
    s = make_splits(ds, SPLIT)
    pats = {name: set(ds.patient_id[s[name]].tolist()) for name in ("train", "val", "test")}
    assert (
        not (pats["train"] & pats["val"])
        and not (pats["train"] & pats["test"])
        and not (pats["val"] & pats["test"])
    )
    rates = [ds.y[s[name]].mean() for name in ("train", "val", "test")]
    assert max(rates) - min(rates) < 0.08
    assert abs(s.train.size / ds.n_stays - 0.6) < 0.05


def test_external_test_split_is_exactly_the_marked_stays():
    ds = make_tiny_dataset(n=300)
    external = np.zeros(ds.n_stays, dtype=bool)
    external[200:] = True
    ds.patient_id[:] = np.arange(ds.n_stays)
    s = make_splits(ds, SPLIT, external_test=external)
    np.testing.assert_array_equal(s.test, np.arange(200, 300))
    assert set(s.train.tolist()) | set(s.val.tolist()) == set(range(200))


def test_json_round_trip_uses_stay_ids():
    ds = make_tiny_dataset(n=300)
    s = make_splits(ds, SPLIT)
    obj = s.to_json(ds)
    back = Splits.from_json(obj, ds)
    np.testing.assert_array_equal(back.val, s.val)
    assert obj["counts"]["test"] == s.test.size and len(obj["split_digest"]) == 64


def test_single_class_split_is_refused():
    ds = make_tiny_dataset(n=40, prevalence=0.0)
    ds.y[:2] = 1
    with pytest.raises(DataValidationError, match="single class"):
        make_splits(ds, SPLIT)
