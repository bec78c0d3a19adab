"""Raw canonical arrays -> model-ready tensors, with statistics fitted on the training split only.

Imputation: forward fill within a stay, then the training mean of the variable (cells before a
variable's first measurement). Normalisation: z-score with the training mean and standard
deviation of observed values. Numeric statics: z-scored, unknown -> training mean (0). Categorical
statics: code + 1, so 0 means unknown. The mask travels unchanged as float 0/1: models see what
was measured, which is what the missingness trigger exploits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from backdoor_study.data.schema import ClinicalDataset

Batch = dict[str, torch.Tensor]


def forward_fill(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Carry the last observed value forward in time; cells before any observation stay NaN.

    ``x``, ``mask``: (N, T, F). Vectorised: the index of the last observed step, running max over time.
    """
    n, t, f = x.shape
    if t == 0:
        return x.copy()
    steps = np.arange(t, dtype=np.int64)[None, :, None]
    last = np.maximum.accumulate(np.where(mask, steps, -1), axis=1)
    filled = np.take_along_axis(x, np.clip(last, 0, None), axis=1)
    return np.where(last >= 0, filled, np.nan).astype(np.float32)


class Preprocessor:
    """``fit`` on the training stays, then ``transform`` any stays the same way."""

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.static_mean: np.ndarray | None = None
        self.static_std: np.ndarray | None = None
        self.static_cat_cardinalities: list[int] = []

    def fit(self, ds: ClinicalDataset, train_idx: np.ndarray) -> Preprocessor:
        x = ds.x[train_idx]
        m = ds.mask[train_idx]
        count = m.sum(axis=(0, 1))
        total = np.where(m, x, 0.0).astype(np.float64).sum(axis=(0, 1))
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        sq = (
            np.where(m, (x - mean[None, None, :].astype(np.float32)) ** 2, 0.0)
            .astype(np.float64)
            .sum(axis=(0, 1))
        )
        var = np.divide(sq, count - 1, out=np.ones_like(sq), where=count > 1)
        self.mean = mean.astype(np.float32)
        self.std = _safe_std(np.sqrt(var)).astype(np.float32)

        s = ds.static_num[train_idx].astype(np.float64)
        with np.errstate(all="ignore"):
            smean = np.nan_to_num(np.nanmean(s, axis=0), nan=0.0) if s.shape[1] else np.zeros(0)
            sstd = (
                np.nan_to_num(np.nanstd(s, axis=0, ddof=1), nan=1.0) if s.shape[1] else np.ones(0)
            )
        self.static_mean = smean.astype(np.float32)
        self.static_std = _safe_std(sstd).astype(np.float32)
        self.static_cat_cardinalities = [len(levels) + 1 for levels in ds.static_cat_levels]
        return self

    def transform(self, ds: ClinicalDataset, idx: np.ndarray | None = None) -> Batch:
        """Tensors for the stays at ``idx`` (all stays when None), in that order."""
        if self.mean is None:
            raise RuntimeError("Preprocessor.transform called before fit")
        if idx is None:
            idx = np.arange(ds.n_stays)
        x = ds.x[idx]
        mask = ds.mask[idx]
        filled = forward_fill(x, mask)
        z = (filled - self.mean) / self.std
        z = np.nan_to_num(z, nan=0.0)  # never observed so far: the training mean
        s = (ds.static_num[idx] - self.static_mean) / self.static_std
        s = np.nan_to_num(s, nan=0.0)
        return {
            "x": torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)),
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "static_num": torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)),
            "static_cat": torch.from_numpy(ds.static_cat[idx] + 1),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "static_mean": self.static_mean.tolist(),
            "static_std": self.static_std.tolist(),
            "static_cat_cardinalities": list(self.static_cat_cardinalities),
        }


def _safe_std(std: np.ndarray) -> np.ndarray:
    """A constant (or unseen) feature gets std 1 rather than a division by zero."""
    return np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
