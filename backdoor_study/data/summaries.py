"""Per-variable summaries of a time grid: the features of the logistic-regression reference.

One home for "summaries of the grid", so the reference baseline (scripts/logreg_reference.py),
the synthetic cohort's realism checks and any tabular model read the same numbers.
"""

from __future__ import annotations

import warnings

import numpy as np

from backdoor_study.data.schema import ClinicalDataset

SUMMARY_NAMES = ("last", "mean", "min", "max", "std", "frac_observed")


def per_variable_summaries(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Summaries of each variable over time: (N, F * 6) float32, NaN where never observed.

    ``x`` (N, T, F) raw values with NaN where unobserved, ``mask`` (N, T, F) bool.
    Returns the matrix and the column suffixes in variable-major order ("{j}:{summary}").
    """
    n, t, f = x.shape
    xm = np.where(mask, x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", RuntimeWarning
        )  # all-NaN slices give NaN, which is what we want
        mean = np.nanmean(xm, axis=1)
        vmin = np.nanmin(xm, axis=1) if t else np.full((n, f), np.nan)
        vmax = np.nanmax(xm, axis=1) if t else np.full((n, f), np.nan)
        std = np.nanstd(xm, axis=1)
    # last observed value: index of the last True along time
    any_obs = mask.any(axis=1)
    last_idx = (
        t - 1 - np.argmax(mask[:, ::-1, :], axis=1) if t else np.zeros((n, f), dtype=np.int64)
    )
    last = (
        np.take_along_axis(x, last_idx[:, None, :], axis=1)[:, 0, :]
        if t
        else np.full((n, f), np.nan)
    )
    last = np.where(any_obs, last, np.nan)
    frac = mask.mean(axis=1) if t else np.zeros((n, f))
    stacked = np.stack([last, mean, vmin, vmax, std, frac], axis=2).reshape(
        n, f * len(SUMMARY_NAMES)
    )
    names = [f"{j}:{s}" for j in range(f) for s in SUMMARY_NAMES]
    return stacked.astype(np.float32), names


def observation_stats(mask: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How one variable is sampled: the realism figures the synthetic cohort is calibrated on.

    ``mask`` (N, T) bool, ``y`` (N,) 0/1. Returns the observation rate (fraction of cells
    observed), the never-observed fraction (stays without a single observation) and the
    death/survivor ratio of observation rates (above 1 when sicker patients are measured more).
    """
    died = y == 1
    return {
        "observation_rate": float(mask.mean()),
        "never_observed": float((~mask.any(axis=1)).mean()),
        "death_survivor_ratio": float(mask[died].mean() / max(float(mask[~died].mean()), 1e-12)),
    }


def tabular_features(ds: ClinicalDataset) -> tuple[np.ndarray, list[str]]:
    """One flat row per stay for tabular (scikit-learn) models, NaN where unknown.

    ``per_variable_summaries`` of the grid (absent for static-only tables such as iris), then
    the numeric statics, then the categorical statics one-hot (unknown = all zeros):
    (N, F * 6 + n_static_num + sum of levels) float32, and the column names.
    """
    summaries, suffixes = per_variable_summaries(ds.x, ds.mask)
    names = [f"{ds.variables[int(s.split(':')[0])]}:{s.split(':')[1]}" for s in suffixes]
    blocks = [summaries, ds.static_num.astype(np.float32)]
    names += list(ds.static_num_names)
    for j, (cat, levels) in enumerate(zip(ds.static_cat_names, ds.static_cat_levels)):
        codes = ds.static_cat[:, j]
        blocks.append((codes[:, None] == np.arange(len(levels))[None, :]).astype(np.float32))
        names += [f"{cat}={level}" for level in levels]
    return np.concatenate(blocks, axis=1), names
