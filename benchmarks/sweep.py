"""Sweep throughput and the cost of MLflow tracking, measured the way a user runs sweeps.

Each measurement is one ``python -m backdoor_study.train -m ... hydra/launcher=joblib`` into a
fresh ``runs_root`` (so with tracking on, the SQLite store is created by the sweep, as for a new
study), for two grids at their presets' own sizes (what a user runs):

- ``demo``: ``experiment=demo``, the grid ``make demo`` trains (mlp,lstm x rare_value_strong,
  missingness x poison_rate 0,0.01,0.05 x seeds 1,2; 6 epochs on a 4,000-stay dev cohort)
- ``thesis_slice``: 24 cells of ``experiment=thesis_grid`` (mlp,lstm x rare_value,missingness x
  0.005,0.01,0.05 x seeds 1,2; 10 epochs on the default 8,000-stay dev cohort), each with its
  shared clean reference (8 more trained runs)

with 1 and 2 joblib workers, each with ``tracking=mlflow`` and ``tracking=none``. It prints the
trained run directories per minute and the tracking overhead ``wall(mlflow) / wall(none) - 1``
(target < 5%). The tracked sweeps log as ``--sweep-logging`` says (``tracking.sweep_logging``:
``launcher``, the default, or ``jobs``). The wall-clock difference of two sweeps moves by several
percent with whatever else the machine runs, so it also prints the time spent inside MLflow as
the tracked sweep timed it itself, whichever process spent it (the ``tracking-time`` lines: the
store's preparation and, with launcher logging, the launching process's logging of every run,
both in the sweep's output; with jobs logging, each run's own line in its ``train.log``) as a
share of the untracked sweep's worker time. With launcher logging those seconds are spent by
the sweep's logger (``sweep.SweepLogger``: a process forked from the launching one on Linux)
beside the training: they cost the sweep wall time only where the cores are busy (2 workers on 2
cores), so with launcher logging the wall ratio is the measure of what tracking costs. The
logger's CPU seconds and how long the sweep's end waited for its last runs are printed beside
them. Every tracked sweep is also checked for what the issue requires of it: as many MLflow runs
in its store as run directories (else the benchmark stops and prints the sweep's output); the
records of runs the store already held (a run that one job trained and another skipped) are
counted beside it. Each grid's synthetic cohort
is generated before the timings, and so is the empty-store template that every new SQLite store
copies (``tracking.store_template``, made once per machine and MLflow version; its time is
printed). ``--epochs`` /
``--dev-size`` shrink the runs for a quick check (tracking's fixed costs then dominate).

The projection for the full thesis_grid (288 poisoned runs + 72 clean references at the default
10 epochs on the default 8,000-stay dev cohort) times one epoch of each model at full size
(``--calibrate``), adds the per-run cost beyond training measured in the slice sweep, and divides
by the workers.

    python benchmarks/sweep.py [--workers 1 2] [--grids demo thesis_slice] [--keep DIR]
                               [--sweep-logging launcher|jobs] [--repeats N]
    python benchmarks/sweep.py --epochs 2 --dev-size 1000 --no-calibrate     # a quick check

With ``--keep DIR`` finished sweeps are saved in ``DIR/sweeps.json`` and reused, so the 1-worker
and 2-worker sweeps can be run as separate commands (e.g. the 1-worker ones pinned to one core
with ``taskset -c 1`` while the other core is busy) and printed together.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backdoor_study import rundir  # noqa: E402
from backdoor_study.tracking import STORE_FILE, TRACKING_TIME_LOG  # noqa: E402

GRIDS = {
    "demo": ["experiment=demo"],
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


def store_cache(root: Path) -> Path:
    """The benchmark's own cache: the empty-store template (tracking.store_template), made in
    warm-up."""
    return root / "cache"


def env(root: Path, data_dir: Path | None = None) -> dict[str, str]:
    e = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BACKDOOR_STUDY_TRACKING", "MLFLOW_TRACKING_URI")
    }
    if data_dir is not None:
        e["BACKDOOR_STUDY_DATA_DIR"] = str(data_dir)
    return e | {
        "BACKDOOR_STUDY_CACHE_DIR": str(store_cache(root)),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }


def train_cmd(overrides: list[str], multirun: bool) -> list[str]:
    return [sys.executable, "-m", "backdoor_study.train", *(["-m"] if multirun else []), *overrides]


def grid_data_dir(root: Path, grid: str) -> Path:
    return root / f"data-{grid}"


def warm_up(grid: str, common: list[str], root: Path) -> None:
    """Generate the grid's synthetic cohort (one 1-epoch untracked run), outside the timings."""
    preset = [o for o in GRIDS[grid] if o.startswith("experiment=")]
    args = [
        *preset,
        *common,
        f"data.data_dir={grid_data_dir(root, grid)}",
        "tracking=none",
        "epochs=1",
        f"runs_root={root / f'warmup-{grid}'}",
    ]
    subprocess.run(
        train_cmd(args, False), cwd=REPO, env=env(root, grid_data_dir(root, grid)),
        capture_output=True, text=True, check=True,
    )  # fmt: skip


def make_store_template(root: Path) -> float:
    """Seconds to make the empty MLflow store that every new store copies: once per machine (and
    MLflow version), so outside the timings; a fresh process, as for a first store."""
    code = (
        "import time; t = time.perf_counter(); from backdoor_study import tracking; "
        "tracking.store_template(); print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env(root),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def sweep(
    grid: str,
    workers: int,
    tracking: str,
    common: list[str],
    data_dir: Path,
    root: Path,
    sweep_logging: str = "launcher",
    repeat: int = 0,
) -> dict:
    mode = f"-{sweep_logging}" if tracking == "mlflow" else ""
    again = f"-r{repeat}" if repeat else ""
    runs_root = root / f"{grid}-w{workers}-{tracking}{mode}{again}"
    args = [
        *GRIDS[grid],
        *common,
        f"data.data_dir={data_dir}",
        f"runs_root={runs_root}",
        f"tracking={tracking}",
        *([f"tracking.sweep_logging={sweep_logging}"] if tracking == "mlflow" else []),
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={workers}",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(
        train_cmd(args, True), cwd=REPO, env=env(root, data_dir), capture_output=True, text=True
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
    # a run's own line is the last in its train.log (a clean reference trained inside a
    # poisoned job logs its line into both)
    per_run = [
        own[-1] for r in runs if (own := logged_seconds((r / "train.log").read_text(), "train"))
    ]
    output = out.stdout + out.stderr
    store = logged_seconds(output, "store")
    # launcher logging: the launching process's time on the runs (the store's is its own line)
    launcher = logged_seconds(output, "sweep")
    launcher_runs = sum(
        int(n) for n in re.findall(rf"{TRACKING_TIME_LOG} sweep: .* logged (\d+) runs", output)
    )
    already = re.findall(rf"{TRACKING_TIME_LOG} sweep: .* \((\d+) already logged", output)
    launcher_cpu = re.findall(rf"{TRACKING_TIME_LOG} sweep: .* ([0-9.]+) s of CPU", output)
    launcher_wait = re.findall(rf"{TRACKING_TIME_LOG} sweep: .* end waited ([0-9.]+) s", output)
    mlflow_runs = None
    if tracking == "mlflow":
        # the invariant, checked on every measured sweep: N run directories, N MLflow
        # runs (a second record of a run, from a job that skipped it, is "already logged")
        mlflow_runs = count_mlflow_runs(runs_root)
        if mlflow_runs != len(runs):
            raise SystemExit(
                f"sweep {grid} w{workers} {tracking}: {len(runs)} run directories but "
                f"{mlflow_runs} MLflow runs in {runs_root}:\n{output[-3000:]}"
            )
    return {
        "grid": grid,
        "workers": workers,
        "tracking": tracking,
        "sweep_logging": sweep_logging if tracking == "mlflow" else None,
        "runs": len(runs),
        "wall_s": wall,
        "train_s": train_s,
        # seconds inside MLflow, timed by whichever process spent them (TRACKING_TIME_LOG lines)
        "tracking_s": sum(per_run) + sum(launcher),
        "tracked_runs": len(per_run) + launcher_runs,
        # records of runs the store held already (logged by the record another job left)
        "already_logged": sum(int(n) for n in already),
        "mlflow_runs": mlflow_runs,
        "store_s": sum(store),
        # the sweep's logger (launcher logging): CPU seconds, store included
        "launcher_cpu_s": sum(float(c) for c in launcher_cpu) if launcher_cpu else None,
        # how long the sweep's end waited for the logger's last runs (on the wall clock)
        "launcher_wait_s": sum(float(w) for w in launcher_wait) if launcher_wait else None,
    }


def count_mlflow_runs(runs_root: Path) -> int:
    """The MLflow runs in the store of a sweep into ``runs_root`` (its default SQLite store),
    every experiment and status."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_root / STORE_FILE}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids, max_results=50_000)) if ids else 0


def logged_seconds(text: str, what: str) -> list[float]:
    """The seconds of every ``tracking-time {what}: ... took|in X s`` line in a log."""
    pattern = rf"{TRACKING_TIME_LOG} {what}: .* (?:took|in) ([0-9.]+) s"
    return [float(m) for m in re.findall(pattern, text)]


def saved_key(row: dict) -> tuple:
    """(grid, workers, tracking, sweep_logging, repeat) of a measured sweep (rows saved before
    tracking.sweep_logging existed were logged by the jobs; before --repeats, repeat 0)."""
    mode = row.get("sweep_logging", "jobs") if row["tracking"] == "mlflow" else None
    return (row["grid"], row["workers"], row["tracking"], mode, row.get("repeat", 0))


def find(rows: list[dict], grid: str, workers: int, tracking: str, repeat: int = 0) -> dict:
    """The measured sweep of (grid, workers, tracking), repeat ``repeat``."""
    return next(
        r
        for r in rows
        if (r["grid"], r["workers"], r["tracking"], r.get("repeat", 0))
        == (grid, workers, tracking, repeat)
    )


def calibrate(root: Path) -> dict[str, float]:
    """Seconds of one training epoch per model on the default dev cohort (one worker)."""
    data_dir = root / "data-default"  # the default cohort size, whatever --dev-size says
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
            train_cmd(args, False),
            cwd=REPO,
            env=env(root, data_dir),
            capture_output=True,
            text=True,
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
    p.add_argument("--epochs", type=int, help="override the presets' epochs (quick checks)")
    p.add_argument("--dev-size", type=int, help="override the presets' dev cohort size")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--no-calibrate", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the run trees under this directory")
    p.add_argument(
        "--sweep-logging",
        choices=["launcher", "jobs"],
        default="launcher",
        help="who logs the tracked sweeps' runs (tracking.sweep_logging)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each (grid, workers) pair of sweeps this many times, interleaved "
        "(none, mlflow, mlflow, none, none, mlflow, ...: every other pair in the opposite "
        "order), and print every pair's overhead and their median",
    )
    a = p.parse_args()
    common = ["trainer.progress=false"]
    if a.epochs is not None:
        common += [f"epochs={a.epochs}", "metrics.bootstrap=0"]
    if a.dev_size is not None:
        common.append(f"data.dev_size={a.dev_size}")

    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for grid in a.grids:
            warm_up(grid, common, root)
        cache = store_cache(root)
        if any(cache.glob("mlflow-*-empty.db")):
            print(f"empty-store template already in {cache}")
        else:
            print(
                f"first store on this machine (importing MLflow, replaying its schema migrations "
                f"into the template, once): {make_store_template(root):.1f} s"
            )
        # with --keep, measured sweeps are saved and reused (e.g. to redo only the calibration)
        saved = root / "sweeps.json"
        done = json.loads(saved.read_text()) if a.keep and saved.is_file() else []
        done = [r for r in done if r.get("common") == common]
        rows = []
        for grid in a.grids:
            for workers in a.workers:
                for repeat in range(a.repeats):
                    # every other pair in the opposite order, so that a machine slowly getting
                    # faster or slower does not favour the sweep that always runs second
                    order = ("none", "mlflow") if repeat % 2 == 0 else ("mlflow", "none")
                    for tracking in order:
                        mode = a.sweep_logging if tracking == "mlflow" else None
                        key = (grid, workers, tracking, mode, repeat)
                        r = next((d for d in done if saved_key(d) == key), None)
                        if r is None:
                            r = {
                                **sweep(
                                    grid,
                                    workers,
                                    tracking,
                                    common,
                                    grid_data_dir(root, grid),
                                    root,
                                    a.sweep_logging,
                                    repeat,
                                ),
                                "common": common,
                                "repeat": repeat,
                            }
                            done.append(r)
                            saved.write_text(json.dumps(done, indent=1))
                        rows.append(r)
                        print(
                            f"{grid:>13s} workers={workers} tracking={tracking:<6s} "
                            f"repeat={repeat} runs={r['runs']:3d} wall={r['wall_s']:7.1f}s  "
                            f"{60 * r['runs'] / r['wall_s']:6.1f} runs/min",
                            flush=True,
                        )
        pairs = [
            (grid, workers, *(find(rows, grid, workers, t, i) for t in ("none", "mlflow")))
            for grid in a.grids
            for workers in a.workers
            for i in range(a.repeats)
        ]
        print("\ntracking overhead, wall(mlflow) / wall(none) - 1 (target < 5%):")
        for grid in a.grids:
            for workers in a.workers:
                cell = [(n, m) for g, w, n, m in pairs if (g, w) == (grid, workers)]
                overs = [m["wall_s"] / n["wall_s"] - 1 for n, m in cell]
                runs = max(cell[0][1]["runs"], 1)
                per_run = [(m["wall_s"] - n["wall_s"]) * workers / runs for n, m in cell]
                summary = f"{100 * overs[0]:+6.1f}%  "
                if len(overs) > 1:
                    # the walls of two identical sweeps differ by several percent on a shared
                    # machine: the pairs' spread says how far one pair can be trusted
                    low, high = stats.t.interval(
                        0.95, len(overs) - 1, loc=statistics.mean(overs), scale=stats.sem(overs)
                    )
                    total = sum(m["wall_s"] for _, m in cell) / sum(n["wall_s"] for n, _ in cell)
                    summary = (
                        f"median {100 * statistics.median(overs):+.1f}% of {len(overs)} pairs "
                        f"({', '.join(f'{100 * o:+.1f}%' for o in overs)}); mean "
                        f"{100 * statistics.mean(overs):+.1f}% (95% CI {100 * low:+.1f}% to "
                        f"{100 * high:+.1f}%); summed walls {100 * (total - 1):+.1f}%; "
                    )
                print(
                    f"{grid:>13s} workers={workers}: {summary}"
                    f"(~{statistics.median(per_run):.1f} s per run per worker)"
                )
        print(
            f"\ntime inside MLflow (sweep_logging={a.sweep_logging}), timed by the tracked sweep "
            "itself, whichever process spent it (the store's preparation in the launching "
            "process, MLflow's import included; the runs' logging by the launching process or by "
            "each job, MLflow's and matplotlib's imports included), as a share of the untracked "
            "sweep's worker time (wall x workers):"
        )
        for grid, workers, none, mlf in pairs:
            if "tracking_s" not in mlf:
                continue
            inside = mlf["store_s"] + mlf["tracking_s"]
            print(
                f"{grid:>13s} workers={workers}: {inside:6.1f} s = "
                f"{100 * inside / (none['wall_s'] * workers):4.1f}%  (store {mlf['store_s']:.1f} s, "
                f"{mlf['tracked_runs']} runs {mlf['tracking_s']:.1f} s, "
                f"{mlf['tracking_s'] / max(mlf['tracked_runs'], 1):.2f} s per run)"
                + (
                    f"; in the store {n} MLflow runs ({mlf['already_logged']} records of runs "
                    "it held already)"
                    if (n := mlf.get("mlflow_runs")) is not None
                    else ""
                )
                + (
                    f"; the sweep's logger: {cpu:.1f} s of CPU, and the "
                    f"sweep's end waited {mlf['launcher_wait_s']:.1f} s for it"
                    if (cpu := mlf.get("launcher_cpu_s")) is not None
                    else ""
                )
            )

        if a.no_calibrate or "thesis_slice" not in a.grids:
            return
        per_epoch = calibrate(root)
        best = max(a.workers)
        ref = find(rows, "thesis_slice", best, "mlflow")
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
