"""SIGKILL fault injection: kill ``train`` at random times, resume with ``resume=auto``, and check
that the finished run is bitwise identical to one that was never interrupted.

Each trial starts ``python -m backdoor_study.train`` (an LSTM backdoored with a rare-value trigger,
so a nested clean-reference run follows the poisoned one) in a fresh ``runs_root``, waits until the
run directory has been started, sends SIGKILL after a random delay drawn uniformly over the
reference run's span from that start to its ``metrics.json`` (so kills land in training, in
checkpoint writes, in the clean reference and in the final writes), then reruns the same command with ``resume=auto``
(repeating it, should that too be interrupted). For the poisoned and the clean-reference run it
compares with the uninterrupted reference: every tensor of ``final_model.pt`` (``torch.equal``),
``metrics.json`` and ``predictions.parquet`` byte for byte, ``history.csv`` without its timing
column, and ``eval`` on the resumed run must report that everything matches. A trial whose run
was already complete when the signal was due is redrawn, so ``--trials`` kills really interrupt.

    python benchmarks/sigkill_resume.py [--trials 10] [--seed 0] [--epochs 6] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from backdoor_study import eval as eval_mod
from backdoor_study.data.schema import write_parquet
from backdoor_study.data.synthetic import generate_cohort

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN = Path("lstm") / "rare_value" / "0.05" / "seed_7"
CLEAN = Path("lstm") / "rare_value" / "0.0" / "seed_7"


def train_command(data: Path, root: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "backdoor_study.train",
        "data=parquet",
        f"data.path={data}",
        f"runs_root={root}",
        "model=lstm",
        "trigger=rare_value",
        "poison_rate=0.05",
        "seed=7",
        f"epochs={epochs}",
        "trainer.batch_size=64",
        "trainer.progress=false",
        "metrics.bootstrap=20",
        "device=cpu",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONHASHSEED": "0",
    }


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_started(proc: subprocess.Popen, run_dir: Path) -> float | None:
    """Time at which ``run_dir`` got its run_metadata.json (None: the process exited first)."""
    while not (run_dir / "run_metadata.json").exists():
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    return time.perf_counter()


def reference_run(data: Path, root: Path, epochs: int) -> float:
    """Train uninterrupted; return the span from the run dir's start to its metrics.json."""
    proc = _start(train_command(data, root, epochs))
    t0 = _wait_started(proc, root / RUN)
    while t0 is not None and proc.poll() is None and not (root / RUN / "metrics.json").exists():
        time.sleep(0.005)
    t1 = time.perf_counter()
    _, err = proc.communicate()
    if proc.returncode != 0 or t0 is None:
        raise RuntimeError(f"the reference run failed:\n{err[-3000:]}")
    return t1 - t0


def state_at_kill(root: Path) -> str:
    """What the run directories held when the process died, in a few words."""
    parts = []
    for name, rel in (("poisoned", RUN), ("clean", CLEAN)):
        d = root / rel
        if not d.exists():
            continue
        ckpts = sorted(int(p.stem.split("_")[-1]) for p in d.glob("checkpoint_epoch_*.pt"))
        tmp = len(list(d.glob(".*.tmp")))
        bits = [f"ckpt {ckpts[-1] if ckpts else 0}"]
        if (d / "final_model.pt").exists():
            bits.append("final_model")
        if (d / "metrics.json").exists():
            bits.append("complete")
        if tmp:
            bits.append(f"{tmp} .tmp")
        parts.append(f"{name}: {', '.join(bits)}")
    return "; ".join(parts) or "nothing written"


def differences(ref_root: Path, root: Path) -> list[str]:
    """Every way the resumed runs differ from the reference (empty: bitwise identical)."""
    out = []
    for rel in (RUN, CLEAN):
        a, b = ref_root / rel, root / rel
        sa = torch.load(a / "final_model.pt", weights_only=True)["model_state"]
        sb = torch.load(b / "final_model.pt", weights_only=True)["model_state"]
        if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
            out.append(f"{rel}/final_model.pt weights")
        for name in ("metrics.json", "predictions.parquet", "poisoned_indices.npy", "splits.json"):
            if (a / name).read_bytes() != (b / name).read_bytes():
                out.append(f"{rel}/{name}")
        ha = pd.read_csv(a / "history.csv").drop(columns="seconds")
        hb = pd.read_csv(b / "history.csv").drop(columns="seconds")
        if not ha.equals(hb):
            out.append(f"{rel}/history.csv")
        cfg = OmegaConf.create({"run_dir": str(b), "device": "cpu", "checkpoint": None})
        if not eval_mod.run(cfg)["matches_train"]:
            out.append(f"{rel}: eval reports a mismatch")
    return out


def run_trials(trials: int, seed: int, epochs: int, workdir: Path) -> list[dict[str, Any]]:
    data = workdir / "cohort.parquet"
    write_parquet(generate_cohort(n_stays=1200, n_steps=48, seed=seed), data)
    ref_root = workdir / "reference"
    span = reference_run(data, ref_root, epochs)
    print(f"reference run: {span:.1f}s from run-dir start to metrics.json", flush=True)
    rng = np.random.default_rng(seed)
    results: list[dict[str, Any]] = []
    attempt = 0
    while len(results) < trials:
        attempt += 1
        if attempt > 3 * trials:
            raise RuntimeError("too many trials finished before their kill time; raise --epochs")
        root = workdir / f"trial_{attempt}"
        delay = float(rng.uniform(0.0, span))
        proc = _start(train_command(data, root, epochs))
        t0 = _wait_started(proc, root / RUN)
        if t0 is None:
            raise RuntimeError(f"trial {attempt}: train failed:\n{proc.communicate()[1][-3000:]}")
        while proc.poll() is None and time.perf_counter() - t0 < delay:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (root / RUN / "metrics.json").exists():  # complete before its kill time: redraw
            shutil.rmtree(root)
            continue
        at_kill = state_at_kill(root)
        reruns = 0
        while not (root / RUN / "metrics.json").exists():
            reruns += 1
            rerun = subprocess.run(
                train_command(data, root, epochs, "resume=auto"),
                cwd=REPO_ROOT,
                env=_env(),
                capture_output=True,
                text=True,
            )
            if rerun.returncode != 0:
                raise RuntimeError(f"trial {attempt}: resume=auto failed:\n{rerun.stderr[-3000:]}")
        diffs = differences(ref_root, root)
        row = {
            "trial": len(results) + 1,
            "kill_after_s": round(delay, 2),
            "state_at_kill": at_kill,
            "identical": not diffs,
            "differences": diffs,
        }
        results.append(row)
        print(
            f"trial {row['trial']:2d}: SIGKILL {delay:5.2f}s in ({at_kill}) -> "
            f"{'bitwise identical' if not diffs else 'DIFFERS: ' + ', '.join(diffs)}",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument("--out", type=Path, help="write the per-trial results as JSON here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sigkill_resume_"))
    try:
        results = run_trials(args.trials, args.seed, args.epochs, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    n_ok = sum(r["identical"] for r in results)
    print(f"\n{n_ok}/{len(results)} killed runs resumed bitwise identical")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if n_ok != len(results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
