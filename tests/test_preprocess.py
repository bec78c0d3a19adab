"""Preprocessing: statistics from the training split only; forward fill; masks pass through."""

from __future__ import annotations

import numpy as np
import torch

from backdoor_study.data.preprocess import Preprocessor, forward_fill
from tests.conftest import make_tiny_dataset


def test_forward_fill_carries_last_observation():
    x = np.array([[[np.nan], [1.0], [np.nan], [3.0], [np.nan]]], dtype=np.float32)
    mask = ~np.isnan(x)
    out = forward_fill(x, mask)
    np.testing.assert_array_equal(out[0, :, 0], [np.nan, 1.0, 1.0, 3.0, 3.0])


def test_statistics_come_from_the_training_split_only():
    ds = make_tiny_dataset(n=100)
    train = np.arange(50)
    pre = Preprocessor().fit(ds, train)
    ds2 = make_tiny_dataset(n=100)
    ds2.x[50:] += 1000.0  # changing non-training stays must not change the statistics
    pre2 = Preprocessor().fit(ds2, train)
    np.testing.assert_array_equal(pre.mean, pre2.mean)
    np.testing.assert_array_equal(pre.std, pre2.std)
    observed = ds.x[train, :, 0][ds.mask[train, :, 0]]
    assert np.isclose(pre.mean[0], observed.mean(), rtol=1e-5)


def test_transform_outputs_finite_normalised_tensors():
    ds = make_tiny_dataset(n=120)
    idx = np.arange(80)
    batch = Preprocessor().fit(ds, idx).transform(ds, idx)
    assert batch["x"].shape == (80, ds.n_steps, ds.n_features) and batch["x"].dtype == torch.float32
    assert torch.isfinite(batch["x"]).all() and torch.isfinite(batch["static_num"]).all()
    assert abs(float(batch["x"][:, :, 0].mean())) < 0.2
    np.testing.assert_array_equal(batch["mask"].numpy().astype(bool), ds.mask[idx])
    assert int(batch["static_cat"].min()) >= 0  # unknown (-1) became 0
