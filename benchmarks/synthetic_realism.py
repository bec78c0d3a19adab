"""Benchmark: the synthetic cohort side by side with PhysioNet 2012 set A, checked against #8's targets.

Per variable, synthetic vs set A: observation rate, never-observed fraction, death/survivor
observation ratio, 1st / 50th / 99th percentiles and the tail-spread ratio (p99 - p1, synthetic
/ set A). Set A's figures are those of the committed calibration file, which
scripts/calibrate_synthetic.py derives from set A (tests/test_synthetic.py checks that it still
does); no real data is read here. Then logistic regression on per-variable summaries (the
pipeline of scripts/logreg_reference.py, C chosen by inner CV on the training part) on the dev
subset and on the full cohort, trained on train + val and scored on test for each split seed;
and the time to generate ``--n-time`` stays next to a raw RNG fill of the same volume
(benchmarks/data_generation.py). Exits with status 1 when a target is missed.

    python benchmarks/synthetic_realism.py [--n-stays 20000] [--dev-size 8000]
        [--split-seeds 42 1 2] [--n-time 100000] [--markdown]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from backdoor_study.config import SyntheticDataConfig
from backdoor_study.data.schema import ClinicalDataset
from backdoor_study.data.splits import make_splits
from backdoor_study.data.summaries import observation_stats
from backdoor_study.data.synthetic import VARIABLES, calibration, generate_cohort, sample_dev
from backdoor_study.metrics import auroc

REPO = Path(__file__).resolve().parents[1]
PERCENTILES = (0.01, 0.5, 0.99)
# The targets of issue #8, section 4.
MAX_MEDIAN_RATE_GAP, MAX_RATE_GAP = 0.08, 0.25
MAX_MEDIAN_NEVER_GAP = 0.1
SPREAD_RANGE = (0.7, 1.4)
STRONG_RATIO, SHARE_HALFWAY = 1.15, 0.75
AUROC_RANGE = (0.78, 0.90)
MAX_SECONDS_100K = 60.0


def _load(path: Path) -> ModuleType:
    """A script or benchmark module by path (they are not part of the package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def realism_table(ds: ClinicalDataset, cal: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variable: the synthetic figures and set A's, as in the module docstring."""
    levels = list(cal["quantile_levels"])
    rows = []
    for name in VARIABLES:
        j = ds.variables.index(name)
        target = cal["variables"][name]
        values = ds.x[:, :, j][ds.mask[:, :, j]]
        synth_q = np.quantile(values, PERCENTILES) if values.size else np.full(3, np.nan)
        set_a_q = np.array([target["quantiles"][levels.index(p)] for p in PERCENTILES])
        rows.append(
            {
                "variable": name,
                "synthetic": {**observation_stats(ds.mask[:, :, j], ds.y), "p": synth_q},
                "set_a": {k: target[k] for k in ("observation_rate", "never_observed")}
                | {"death_survivor_ratio": target["death_survivor_ratio"], "p": set_a_q},
                "spread_ratio": float((synth_q[2] - synth_q[0]) / (set_a_q[2] - set_a_q[0])),
            }
        )
    return rows


def realism_checks(rows: list[dict[str, Any]]) -> dict[str, tuple[float, bool, str]]:
    """Each target: (measured figure, met, how it is judged)."""
    rate_gap = [
        abs(r["synthetic"]["observation_rate"] - r["set_a"]["observation_rate"]) for r in rows
    ]
    never_gap = [abs(r["synthetic"]["never_observed"] - r["set_a"]["never_observed"]) for r in rows]
    spread = float(np.median([r["spread_ratio"] for r in rows]))
    strong = [r for r in rows if r["set_a"]["death_survivor_ratio"] >= STRONG_RATIO]
    halfway = [
        r["synthetic"]["death_survivor_ratio"] >= 1 + (r["set_a"]["death_survivor_ratio"] - 1) / 2
        for r in strong
    ]
    share = float(np.mean(halfway)) if strong else float("nan")
    return {
        "median |obs-rate gap|": (
            float(np.median(rate_gap)),
            float(np.median(rate_gap)) <= MAX_MEDIAN_RATE_GAP,
            f"<= {MAX_MEDIAN_RATE_GAP}",
        ),
        "max |obs-rate gap|": (max(rate_gap), max(rate_gap) <= MAX_RATE_GAP, f"<= {MAX_RATE_GAP}"),
        "median |never-observed gap|": (
            float(np.median(never_gap)),
            float(np.median(never_gap)) <= MAX_MEDIAN_NEVER_GAP,
            f"<= {MAX_MEDIAN_NEVER_GAP}",
        ),
        "median tail-spread ratio": (
            spread,
            SPREAD_RANGE[0] <= spread <= SPREAD_RANGE[1],
            f"in {SPREAD_RANGE}",
        ),
        f"share of {len(strong)} variables (set A D/S >= {STRONG_RATIO}) at least halfway": (
            share,
            bool(strong) and share >= SHARE_HALFWAY,
            f">= {SHARE_HALFWAY}",
        ),
    }


def summary_auroc(ds: ClinicalDataset, split_seeds: list[int], split: Any) -> list[float]:
    """Test AUROC of the LR reference on summaries, one per split seed (by patient, stratified)."""
    reference = _load(REPO / "scripts" / "logreg_reference.py")
    x, _ = reference.features(ds)
    scores = []
    for seed in split_seeds:
        splits = make_splits(
            ds, SimpleNamespace(train=split.train, val=split.val, test=split.test, seed=seed)
        )
        fit_on = np.concatenate([splits.train, splits.val])
        model = reference.make_model().fit(x[fit_on], ds.y[fit_on])
        scores.append(auroc(ds.y[splits.test], model.predict_proba(x[splits.test])))
    return scores


def generation_seconds(n: int, t: int, seed: int) -> tuple[float, float]:
    """Seconds to generate ``n`` stays, and to fill the same volume with raw normals."""
    reference = _load(REPO / "benchmarks" / "data_generation.py")._reference_seconds(
        n, t, len(VARIABLES), seed
    )
    start = time.perf_counter()
    generate_cohort(n, t, seed=seed)
    return time.perf_counter() - start, reference


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def print_table(rows: list[dict[str, Any]], markdown: bool) -> None:
    head = [
        "variable",
        "obs rate",
        "never obs.",
        "D/S ratio",
        "p1",
        "p50",
        "p99",
        "spread ratio",
    ]
    cells = []
    for r in rows:
        s, a = r["synthetic"], r["set_a"]
        cells.append(
            [r["variable"]]
            + [
                f"{s[k]:.3f} / {a[k]:.3f}"
                if k != "death_survivor_ratio"
                else f"{s[k]:.2f} / {a[k]:.2f}"
                for k in ("observation_rate", "never_observed", "death_survivor_ratio")
            ]
            + [f"{_fmt(s['p'][i])} / {_fmt(a['p'][i])}" for i in range(3)]
            + [f"{r['spread_ratio']:.2f}"]
        )
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for c in cells:
            print("| " + " | ".join(c) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    defaults = SyntheticDataConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-stays", type=int, default=defaults.n_stays)
    p.add_argument("--dev-size", type=int, default=defaults.dev_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--prevalence", type=float, default=defaults.prevalence)
    p.add_argument("--split-seeds", type=int, nargs="+", default=[42, 1, 2])
    p.add_argument("--n-time", type=int, default=100_000, help="stays for the timing (0: skip)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)

    cal = calibration()
    ds = generate_cohort(args.n_stays, defaults.n_steps, args.prevalence, args.seed)
    dev = sample_dev(ds, args.dev_size, args.seed)
    rows = realism_table(ds, cal)
    print(
        f"synthetic: {ds.n_stays:,} stays (seed {args.seed}), mortality {ds.y.mean():.4f}; "
        f"set A: {cal['n_stays']:,} stays, mortality {cal['mortality']:.4f}"
    )
    print("each cell: synthetic / set A")
    print_table(rows, args.markdown)

    checks = realism_checks(rows)
    with threadpool_limits(limits=1):  # multi-threaded BLAS is much slower on shared cores
        for label, cohort in (
            (f"dev subset ({dev.n_stays:,})", dev),
            (f"full ({ds.n_stays:,})", ds),
        ):
            scores = summary_auroc(cohort, args.split_seeds, defaults.split)
            ok = all(AUROC_RANGE[0] <= s <= AUROC_RANGE[1] for s in scores)
            shown = ", ".join(f"{seed}: {s:.3f}" for seed, s in zip(args.split_seeds, scores))
            checks[f"LR-on-summaries test AUROC, {label}, split seeds {shown}"] = (
                min(scores),
                ok,
                f"every seed in {AUROC_RANGE}",
            )
    if args.n_time:
        seconds, reference = generation_seconds(args.n_time, defaults.n_steps, args.seed)
        checks[
            f"generate {args.n_time:,} stays (s; raw RNG fill {reference:.2f} s, "
            f"ratio {seconds / reference:.1f}x)"
        ] = (seconds, seconds < MAX_SECONDS_100K, f"< {MAX_SECONDS_100K:.0f}")

    print()
    for label, (value, ok, rule) in checks.items():
        print(f"[{'ok' if ok else 'MISSED'}] {label}: {value:.3f} (target {rule})")
    missed = [label for label, (_, ok, _) in checks.items() if not ok]
    if missed:
        print(f"{len(missed)} target(s) missed", file=sys.stderr)
    return {"rows": rows, "checks": checks, "missed": missed}


if __name__ == "__main__":
    sys.exit(1 if main()["missed"] else 0)
