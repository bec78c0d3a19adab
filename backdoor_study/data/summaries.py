"""Per-variable summaries of a time grid: the features of the logistic-regression reference.

One home for "summaries of the grid", so the reference baseline (scripts/logreg_reference.py),
the synthetic cohort's realism checks and any tabular model read the same numbers.
"""

from __future__ import annotations

import warnings

import numpy as np

SUMMARY_NAMES = ("last", "mean", "min", "max", "std", "frac_observed")


def per_variable_summaries(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Summaries of each variable over time: (N, F * 6) float32, NaN where never observed.

    ``x`` (N, T, F) raw values with NaN where unobserved, ``mask`` (N, T, F) bool.
    Returns the matrix and the column suffixes in variable-major order ("{j}:{summary}").
    """
    n, t, f = x.shape
    xm = np.where(mask, x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, which is what we want
        mean = np.nanmean(xm, axis=1)
        vmin = np.nanmin(xm, axis=1) if t else np.full((n, f), np.nan)
        vmax = np.nanmax(xm, axis=1) if t else np.full((n, f), np.nan)
        std = np.nanstd(xm, axis=1)
    # last observed value: index of the last True along time
    any_obs = mask.any(axis=1)
    last_idx = t - 1 - np.argmax(mask[:, ::-1, :], axis=1) if t else np.zeros((n, f), dtype=np.int64)
    last = np.take_along_axis(x, last_idx[:, None, :], axis=1)[:, 0, :] if t else np.full((n, f), np.nan)
    last = np.where(any_obs, last, np.nan)
    frac = mask.mean(axis=1) if t else np.zeros((n, f))
    stacked = np.stack([last, mean, vmin, vmax, std, frac], axis=2).reshape(n, f * len(SUMMARY_NAMES))
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
