"""Sweep throughput and the cost of MLflow tracking, measured the way a user runs sweeps.

Each measurement is one ``python -m backdoor_study.train -m ... hydra/launcher=joblib`` into a
fresh ``runs_root`` (so with tracking on, the SQLite store is created by the sweep, as for a new
study), for two grids:

- ``demo``: the demo-sized grid, mlp,lstm x rare_value,missingness x poison_rate 0,0.01,0.05 x seed 1
- ``thesis_slice``: 24 cells of ``experiment=thesis_grid`` (mlp,lstm x rare_value,missingness x
  0.005,0.01,0.05 x seeds 1,2), each with its shared clean reference (8 more trained runs)

with 1 and 2 joblib workers, each with ``tracking=mlflow`` and ``tracking=none``. It prints the
trained run directories per minute and the tracking overhead ``wall(mlflow) / wall(none) - 1``
(target < 5%). Runs are small (``--epochs``, ``--dev-size``) so the whole benchmark stays short.

The projection for the full thesis_grid (288 poisoned runs + 72 clean references at the default
10 epochs on the default 8,000-stay dev cohort) times one epoch of each model at full size
(``--calibrate``), adds the per-run cost beyond training measured in the sweeps, and divides by
the workers.

    python benchmarks/sweep.py [--epochs 2] [--dev-size 1000] [--workers 1 2] [--no-calibrate]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backdoor_study import rundir  # noqa: E402

GRIDS = {
    "demo": [
        "model=mlp,lstm",
        "trigger=rare_value,missingness",
        "poison_rate=0.0,0.01,0.05",
        "seed=1",
    ],
    "thesis_slice": [
        "experiment=thesis_grid",
        "model=mlp,lstm",
        "trigger=rare_value,missingness",
        "poison_rate=0.005,0.01,0.05",
        "seed=1,2",
    ],
}
THESIS_RUNS = (
    4 * 6 * 4 * 3 + 4 * 6 * 3
)  # poisoned cells + one clean reference per model x trigger x seed
MODELS = ("mlp", "lstm", "tcn", "tabtransformer")


def env(data_dir: Path) -> dict[str, str]:
    e = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BACKDOOR_STUDY_TRACKING", "MLFLOW_TRACKING_URI")
    }
    return e | {
        "BACKDOOR_STUDY_DATA_DIR": str(data_dir),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }


def train_cmd(overrides: list[str], multirun: bool) -> list[str]:
    return [sys.executable, "-m", "backdoor_study.train", *(["-m"] if multirun else []), *overrides]


def sweep(
    grid: str, workers: int, tracking: str, common: list[str], data_dir: Path, root: Path
) -> dict:
    runs_root = root / f"{grid}-w{workers}-{tracking}"
    args = [
        *GRIDS[grid],
        *common,
        f"runs_root={runs_root}",
        f"tracking={tracking}",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={workers}",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(
        train_cmd(args, True), cwd=REPO, env=env(data_dir), capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(
            f"sweep {grid} w{workers} {tracking} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    runs = rundir.find_run_dirs(runs_root)
    train_s = sum(
        json.loads((r / rundir.METADATA_FILE).read_text())["timings"]["train_s"] for r in runs
    )
    return {
        "grid": grid,
        "workers": workers,
        "tracking": tracking,
        "runs": len(runs),
        "wall_s": wall,
        "train_s": train_s,
    }


def calibrate(data_dir: Path, root: Path) -> dict[str, float]:
    """Seconds of one training epoch per model on the default dev cohort (one worker)."""
    per_epoch = {}
    for model in MODELS:
        runs_root = root / f"calibrate-{model}"
        args = [
            f"model={model}",
            "epochs=1",
            "tracking=none",
            "trainer.progress=false",
            f"runs_root={runs_root}",
        ]
        out = subprocess.run(
            train_cmd(args, False), cwd=REPO, env=env(data_dir), capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"calibration run {model} failed:\n{out.stderr[-3000:]}")
        (run,) = rundir.find_run_dirs(runs_root)
        per_epoch[model] = json.loads((run / rundir.METADATA_FILE).read_text())["timings"][
            "train_s"
        ]
    return per_epoch


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dev-size", type=int, default=1000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--no-calibrate", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the run trees under this directory")
    a = p.parse_args()
    common = [
        f"epochs={a.epochs}",
        f"data.dev_size={a.dev_size}",
        "trainer.progress=false",
        "metrics.bootstrap=0",
    ]

    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        root = a.keep or Path(tmp)
        data_dir = root / "data"
        # generate the synthetic cohort once, outside the timings
        subprocess.run(
            train_cmd([*common, "tracking=none", "epochs=1", f"runs_root={root / 'warmup'}"], False),
            cwd=REPO, env=env(data_dir), capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows = []
        for grid in a.grids:
            for workers in a.workers:
                for tracking in ("none", "mlflow"):
                    r = sweep(grid, workers, tracking, common, data_dir, root)
                    rows.append(r)
                    print(
                        f"{grid:>13s} workers={workers} tracking={tracking:<6s} runs={r['runs']:3d} "
                        f"wall={r['wall_s']:7.1f}s  {60 * r['runs'] / r['wall_s']:6.1f} runs/min",
                        flush=True,
                    )
        print("\ntracking overhead, wall(mlflow) / wall(none) - 1 (target < 5%):")
        for grid in a.grids:
            for workers in a.workers:
                none, mlf = (
                    next(
                        r
                        for r in rows
                        if (r["grid"], r["workers"], r["tracking"]) == (grid, workers, t)
                    )
                    for t in ("none", "mlflow")
                )
                over = mlf["wall_s"] / none["wall_s"] - 1
                per_run = (mlf["wall_s"] - none["wall_s"]) * workers / max(mlf["runs"], 1)
                print(
                    f"{grid:>13s} workers={workers}: {100 * over:+6.1f}%  (~{per_run:.1f} s per run per worker)"
                )

        if a.no_calibrate:
            return
        per_epoch = calibrate(data_dir, root)
        best = max(a.workers)
        ref = next(
            r
            for r in rows
            if (r["grid"], r["workers"], r["tracking"]) == ("thesis_slice", best, "mlflow")
        )
        # per-run cost beyond training (start-up, data, evaluation, tracking), from the slice sweep
        fixed = (ref["wall_s"] * best - ref["train_s"]) / ref["runs"]
        per_run = {m: 10 * per_epoch[m] + fixed for m in MODELS}
        total = sum(per_run[m] * THESIS_RUNS / len(MODELS) for m in MODELS) / best
        print(
            "\none epoch on the default dev cohort (s): "
            + ", ".join(f"{m} {per_epoch[m]:.1f}" for m in MODELS)
            + f"; per-run cost beyond training {fixed:.1f} s"
        )
        print(
            f"projected full thesis_grid ({THESIS_RUNS} runs, 10 epochs, {best} workers, this machine): "
            f"{total / 3600:.1f} h"
        )


if __name__ == "__main__":
    main()
