#!/usr/bin/env python
"""Derive the synthetic cohort's calibration targets from PhysioNet 2012 set A (never set B).

For each of the synthetic generator's variables, set A's hourly grid (the existing loader,
``backdoor_study.data.physionet2012.load_set``) gives:

- ``observation_rate``: fraction of (stay, hour) cells observed;
- ``never_observed``: fraction of stays with no observation in the window;
- ``death_survivor_ratio``: observation rate among stays that died / among survivors
  (informative missingness: sicker patients get more labs);
- ``quantiles`` at ``quantile_levels`` (tails included) of the observed values, after dropping the
  few values outside the plausible range in ``variables.py`` (set A has e.g. pH 735, Temp -17.8).

plus the in-hospital mortality. The result is a small JSON file shipped with the package
(``backdoor_study/data/synthetic_calibration.json``): the generator reads only that file at run
time, never the real data. Re-run this script (and bump ``GENERATOR_VERSION``) to recalibrate.

    python scripts/calibrate_synthetic.py [--root DIR] [--cache-dir data/cache] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from backdoor_study.data.physionet2012 import default_root, load_set
from backdoor_study.data.schema import ClinicalDataset
from backdoor_study.data.summaries import observation_stats
from backdoor_study.data.synthetic import CALIBRATION_FILE, VARIABLES
from backdoor_study.data.variables import VARIABLES as REGISTRY
from backdoor_study.utils import write_json

SET = "a"  # the only set used: set B stays external validation
N_STEPS = 48
# Dense in the tails, so that the generator's 1st / 99th percentiles (and beyond) follow set A.
QUANTILE_LEVELS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35,
    0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99,
    0.995, 0.9975, 0.999, 0.9995,
)  # fmt: skip


def plausible_values(ds: ClinicalDataset, name: str) -> tuple[np.ndarray, int]:
    """Observed values of ``name`` inside its plausible range, and how many were dropped."""
    j = ds.variables.index(name)
    values = ds.x[:, :, j][ds.mask[:, :, j]].astype(np.float64)
    spec = REGISTRY[name]
    inside = (values >= spec.low) & (values <= spec.high)
    return values[inside], int((~inside).sum())


def calibrate(ds: ClinicalDataset, files: dict[str, Any]) -> dict[str, Any]:
    missing = [v for v in VARIABLES if v not in ds.variables]
    if missing:
        raise ValueError(f"{ds.name} lacks the generator's variable(s) {missing}")
    variables = {}
    for name in VARIABLES:
        j = ds.variables.index(name)
        values, dropped = plausible_values(ds, name)
        variables[name] = {
            **observation_stats(ds.mask[:, :, j], ds.y),
            "n_values": int(values.size),
            "n_dropped_implausible": dropped,
            "quantiles": [round(float(q), 4) for q in np.quantile(values, QUANTILE_LEVELS)],
        }
    return {
        "source": f"PhysioNet/CinC Challenge 2012 set {SET.upper()} (set B is never used)",
        "created_by": "scripts/calibrate_synthetic.py",
        "files": files,
        "n_stays": ds.n_stays,
        "n_steps": int(ds.x.shape[1]),
        "mortality": float(ds.y.mean()),
        "quantile_levels": list(QUANTILE_LEVELS),
        "variables": variables,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", type=Path, default=default_root(), help="the challenge files")
    p.add_argument("--cache-dir", default="data/cache", help="Parquet cache ('' to parse)")
    p.add_argument("--out", type=Path, default=CALIBRATION_FILE)
    args = p.parse_args(argv)
    ds, info = load_set(args.root, SET, n_steps=N_STEPS, cache_dir=args.cache_dir or None)
    files = {k: v["sha256"] for k, v in info["files"].items()}
    result = calibrate(ds, files)
    write_json(args.out, result)
    print(
        f"set {SET.upper()}: {ds.n_stays} stays, mortality {result['mortality']:.4f} -> {args.out}"
    )
    print(
        f"{'variable':<11} {'obs rate':>8} {'never':>6} {'D/S':>5} {'p1':>8} {'p50':>8} {'p99':>8}"
    )
    levels = list(QUANTILE_LEVELS)
    for name, v in result["variables"].items():
        q = v["quantiles"]
        print(
            f"{name:<11} {v['observation_rate']:8.3f} {v['never_observed']:6.3f} "
            f"{v['death_survivor_ratio']:5.2f} {q[levels.index(0.01)]:8.2f} "
            f"{q[levels.index(0.5)]:8.2f} {q[levels.index(0.99)]:8.2f}"
        )
    return result


if __name__ == "__main__":
    main()
